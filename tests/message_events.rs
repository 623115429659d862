//! Message events through real nodes (issue 14): edit, delete, reactions, replies in
//! threads and mentions, over the WebSocket and the REST API; who may do what; retries
//! applied once; a deleted message's text gone from both copies of the log on disk; and
//! every client's view equal to the history after the owner dies mid-way.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::chat::{token, ChatCluster, WsClient};
use common::{wait_for, Api};
use serde_json::{json, Value};

/// A message as a client sees it after applying every frame (docs/PROTOCOL.md, "Message
/// events": the rules a client follows).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Shown {
    text: String,
    edited: bool,
    deleted: bool,
    reactions: BTreeMap<String, BTreeSet<String>>,
    replies: u64,
    last_reply: u64,
    reply_to: Option<u64>,
}

/// Applies one `message` frame (a message or an event) to a client's view of a room.
fn apply(view: &mut BTreeMap<u64, Shown>, frame: &Value) {
    let seq = frame["seq"].as_u64().expect("seq");
    let target = frame["target"].as_u64();
    match frame["kind"].as_str().unwrap_or("message") {
        "message" | "system" => {
            let mut reactions = BTreeMap::new();
            for reaction in frame["reactions"].as_array().into_iter().flatten() {
                let users =
                    reaction["users"].as_array().expect("users").iter().map(|u| u.as_str().unwrap().to_string());
                reactions.insert(reaction["emoji"].as_str().unwrap().to_string(), users.collect());
            }
            let shown = Shown {
                text: frame["text"].as_str().unwrap_or_default().to_string(),
                edited: frame["edited"].as_bool().unwrap_or(false),
                deleted: frame["deleted"].as_bool().unwrap_or(false),
                reactions,
                replies: frame["replies"].as_u64().unwrap_or(0),
                last_reply: frame["last_reply"].as_u64().unwrap_or(0),
                reply_to: frame["reply_to"].as_u64(),
            };
            view.insert(seq, shown);
            if let Some(root) = frame["reply_to"].as_u64().and_then(|root| view.get_mut(&root)) {
                if seq > root.last_reply {
                    root.replies += 1;
                    root.last_reply = seq;
                }
            }
        }
        "edit" => {
            if let Some(shown) = target.and_then(|t| view.get_mut(&t)).filter(|shown| !shown.deleted) {
                shown.text = frame["text"].as_str().unwrap_or_default().to_string();
                shown.edited = true;
            }
        }
        "delete" => {
            if let Some(shown) = target.and_then(|t| view.get_mut(&t)) {
                shown.deleted = true;
                shown.text.clear();
                shown.reactions.clear();
            }
        }
        "reaction" => {
            if let Some(shown) = target.and_then(|t| view.get_mut(&t)) {
                let emoji = frame["emoji"].as_str().expect("emoji").to_string();
                let users = shown.reactions.entry(emoji.clone()).or_default();
                let sender = frame["sender"].as_str().expect("sender").to_string();
                if frame["on"].as_bool() == Some(true) {
                    users.insert(sender);
                } else {
                    users.remove(&sender);
                    if users.is_empty() {
                        shown.reactions.remove(&emoji);
                    }
                }
            }
        }
        other => panic!("unknown kind {other}"),
    }
}

/// The messages (not the events) of a view, for comparing with the history.
fn messages_only(view: &BTreeMap<u64, Shown>, history: &BTreeMap<u64, Shown>) -> BTreeMap<u64, Shown> {
    view.iter().filter(|(seq, _)| history.contains_key(seq)).map(|(seq, shown)| (*seq, shown.clone())).collect()
}

/// The room's history through REST, messages only, as the folded state of each.
async fn history_view(api: &Api, base: &str, room: u64) -> BTreeMap<u64, Shown> {
    let page = api.get(&format!("{base}/api/rooms/{room}/messages?limit=200")).await.expect("history");
    assert_eq!(page["has_more"], false, "{page}");
    let mut view = BTreeMap::new();
    let mut frames: Vec<Value> = page["messages"].as_array().expect("messages").clone();
    frames.reverse();
    for frame in frames.iter().filter(|f| f["kind"].as_str().unwrap_or("message") == "message") {
        // A page carries each message's folded state: no event needs applying again.
        let mut alone = BTreeMap::new();
        apply(&mut alone, frame);
        view.insert(frame["seq"].as_u64().unwrap(), alone.into_values().next().unwrap());
    }
    view
}

/// A WebSocket client that keeps the `message` frames it reads while waiting for
/// something else.
struct Client {
    ws: WsClient,
    messages: BTreeMap<u64, Value>,
}

impl Client {
    async fn connect(ws_url: &str, token: &str, room: u64) -> Self {
        let mut ws = WsClient::connect(ws_url, token).await;
        ws.subscribe(room, None).await;
        Self { ws, messages: BTreeMap::new() }
    }

    /// The next frame that is not a `message` (those are kept).
    async fn next_other(&mut self) -> Value {
        loop {
            let frame = self.ws.next(Duration::from_secs(20)).await.expect("a frame within 20 s");
            if frame["type"] != "message" {
                return frame;
            }
            self.messages.insert(frame["seq"].as_u64().expect("seq"), frame);
        }
    }

    /// Sends a frame that changes the log and waits for its ack (retrying, same
    /// client_id, while the room is unavailable): the ack's seq, or the error frame.
    async fn change(&mut self, frame: Value) -> Result<u64, Value> {
        let client_id = frame["client_id"].as_str().expect("client_id").to_string();
        for _ in 0..200 {
            self.ws.send(frame.clone()).await;
            let answer = loop {
                let other = self.next_other().await;
                match other["type"].as_str() {
                    Some("ack") if other["client_id"] == client_id => break Ok(other["seq"].as_u64().expect("seq")),
                    Some("error") if other["ref"] == client_id => break Err(other),
                    _ => {}
                }
            };
            match answer {
                Err(error) if error["code"] == "unavailable" => tokio::time::sleep(Duration::from_millis(100)).await,
                answer => return answer,
            }
        }
        panic!("{client_id} never answered but unavailable");
    }

    /// The `message` frame with this seq.
    async fn message(&mut self, seq: u64) -> Value {
        while !self.messages.contains_key(&seq) {
            let frame = self.ws.next(Duration::from_secs(15)).await.unwrap_or_else(|| panic!("no message {seq}"));
            if frame["type"] == "message" {
                self.messages.insert(frame["seq"].as_u64().expect("seq"), frame);
            }
        }
        self.messages[&seq].clone()
    }

    /// Sends a read and returns its answer frame of type `kind`.
    async fn ask(&mut self, frame: Value, kind: &str) -> Value {
        self.ws.send(frame).await;
        loop {
            let answer = self.next_other().await;
            if answer["type"] == kind {
                return answer;
            }
            assert_ne!(answer["type"], "error", "{answer}");
        }
    }
}

/// REST call with the API's token: status and JSON body.
async fn rest(api: &Api, method: reqwest::Method, url: String, body: Value) -> (u16, Value) {
    let response = api
        .http
        .request(method, url)
        .bearer_auth(api.token.as_deref().expect("logged in"))
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_deletes_reactions_replies_and_mentions_round_trip() {
    let cluster = ChatCluster::start(2).await;
    let base = cluster.url();
    let alice = Api::logged_in(&base, "alice").await;
    let bob = Api::logged_in(&base, "bob").await;
    let room = cluster.create_room(&alice, "events", false).await;
    let (room, owner, replica) =
        (room["id"].as_u64().unwrap(), room["owner"].as_u64().unwrap(), room["replica"].as_u64().unwrap());
    let (alice_token, _) = token(&alice, &base).await;
    let (bob_token, _) = token(&bob, &base).await;
    let mut a = Client::connect(&cluster.node(0).ws_url(), &alice_token, room).await;
    let mut b = Client::connect(&cluster.node(1).ws_url(), &bob_token, room).await;
    let mut seen = BTreeMap::new();

    // A message mentioning bob: the server recognises the mention.
    let hello = a
        .change(json!({"type": "send", "room": room, "client_id": "hello", "text": "hi @Bob, see this"}))
        .await
        .expect("sent");
    let frame = b.message(hello).await;
    assert_eq!(frame["mentions"], json!(["bob"]), "{frame}");
    apply(&mut seen, &frame);

    // Only the author edits; the edit reaches bob live.
    let edit = json!({"type": "edit", "room": room, "client_id": "e1", "target": hello, "text": "hi @bob, see this!"});
    let edited = a.change(edit.clone()).await.expect("author edits");
    let frame = b.message(edited).await;
    assert_eq!((frame["kind"].as_str(), frame["target"].as_u64()), (Some("edit"), Some(hello)));
    apply(&mut seen, &frame);
    let by_bob = json!({"type": "edit", "room": room, "client_id": "e2", "target": hello, "text": "mine now"});
    assert_eq!(b.change(by_bob).await.expect_err("not the author")["code"], "forbidden");
    assert_eq!(a.change(edit).await.expect("a retry"), edited, "the same client_id applies once");
    let missing = json!({"type": "edit", "room": room, "client_id": "e3", "target": 999, "text": "x"});
    assert_eq!(a.change(missing).await.expect_err("no such message")["code"], "not_found");

    // A reaction toggled twice leaves none; a retry of the first does not toggle back.
    let thumbs = |id: &str| json!({"type": "react", "room": room, "client_id": id, "target": hello, "emoji": "👍"});
    let on = b.change(thumbs("r1")).await.expect("react");
    assert_eq!(b.change(thumbs("r1")).await.expect("retry"), on);
    let off = b.change(thumbs("r2")).await.expect("react again");
    for seq in [on, off] {
        apply(&mut seen, &b.message(seq).await);
    }
    assert!(seen[&hello].reactions.is_empty(), "toggled twice: none left");
    let heart = json!({"type": "react", "room": room, "client_id": "r3", "target": hello, "emoji": "❤️"});
    let hearted = b.change(heart).await.expect("react");
    apply(&mut seen, &b.message(hearted).await);
    let bad = json!({"type": "react", "room": room, "client_id": "r4", "target": hello, "emoji": "🦀"});
    assert_eq!(b.change(bad).await.expect_err("not in the set")["code"], "bad_frame");

    // A reply, and a reply to the reply: both in the root's thread.
    let reply = json!({"type": "send", "room": room, "client_id": "re1", "text": "a reply", "reply_to": hello});
    let first_reply = b.change(reply).await.expect("reply");
    let nested =
        json!({"type": "send", "room": room, "client_id": "re2", "text": "and another", "reply_to": first_reply});
    let second_reply = a.change(nested).await.expect("reply to a reply");
    for seq in [first_reply, second_reply] {
        let frame = b.message(seq).await;
        assert_eq!(frame["reply_to"], hello, "{frame}");
        apply(&mut seen, &frame);
    }
    let thread = b.ask(json!({"type": "thread", "room": room, "root": hello}), "thread").await;
    let thread_seqs: Vec<u64> =
        thread["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(thread_seqs, vec![hello, first_reply, second_reply]);
    assert_eq!(thread["messages"][0]["replies"], 2);

    // REST: the same operations, the same answers and codes.
    let url = |path: &str| format!("{base}/api/rooms/{room}/{path}");
    let (status, posted) =
        rest(&bob, reqwest::Method::POST, url("messages"), json!({"client_id": "rest1", "text": "via REST @alice"}))
            .await;
    assert_eq!(status, 201, "{posted}");
    let rest_seq = posted["seq"].as_u64().unwrap();
    let (status, again) =
        rest(&bob, reqwest::Method::POST, url("messages"), json!({"client_id": "rest1", "text": "via REST @alice"}))
            .await;
    assert_eq!((status, again["seq"].as_u64()), (200, Some(rest_seq)), "a retry answers the same seq");
    let path = format!("messages/{rest_seq}");
    let (status, body) =
        rest(&alice, reqwest::Method::PATCH, url(&path), json!({"client_id": "rest2", "text": "hijack"})).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));
    let (status, _) =
        rest(&bob, reqwest::Method::PATCH, url(&path), json!({"client_id": "rest3", "text": "via REST, edited"})).await;
    assert_eq!(status, 201);
    let reactions = format!("messages/{rest_seq}/reactions");
    let (status, _) =
        rest(&alice, reqwest::Method::POST, url(&reactions), json!({"client_id": "rest4", "emoji": "🎉"})).await;
    assert_eq!(status, 201);
    let (status, body) = rest(&alice, reqwest::Method::GET, url(&format!("threads/{hello}")), Value::Null).await;
    assert_eq!((status, body["messages"].as_array().map(Vec::len)), (200, Some(3)));
    let (status, body) = rest(&alice, reqwest::Method::GET, format!("{base}/api/mentions"), Value::Null).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["mentions"][0]["message"]["seq"], rest_seq, "alice's newest mention: {body}");
    assert_eq!(body["mentions"][0]["message"]["text"], "via REST, edited");

    // Bob's mention count after his read mark, over the WebSocket.
    let mentions = b.ask(json!({"type": "mentions", "room": room, "after": 0}), "mentions").await;
    assert_eq!(mentions["messages"].as_array().unwrap().len(), 1, "{mentions}");

    // Only the author or a moderator deletes; the text then goes from both copies.
    let delete = |id: &str| json!({"type": "delete", "room": room, "client_id": id, "target": hello});
    assert_eq!(b.change(delete("d1")).await.expect_err("not the author")["code"], "forbidden");
    let deleted = a.change(delete("d2")).await.expect("the author deletes");
    assert_eq!(a.change(delete("d2")).await.expect("retry"), deleted);
    assert_eq!(a.change(delete("d3")).await.expect_err("deleted already")["code"], "not_found");
    let react_after = json!({"type": "react", "room": room, "client_id": "r9", "target": hello, "emoji": "👍"});
    assert_eq!(b.change(react_after).await.expect_err("a deleted message")["code"], "not_found");
    let deleted_frame = b.message(deleted).await;
    apply(&mut seen, &deleted_frame);
    let mentions = b.ask(json!({"type": "mentions", "room": room, "after": 0}), "mentions").await;
    assert_eq!(mentions["messages"], json!([]), "a deleted message mentions no one");
    for node in [owner, replica] {
        let log = cluster.node(cluster.index_of(node)).node.log.clone();
        let texts = wait_for("the deleted texts to be erased", Duration::from_secs(10), || {
            let log = log.clone();
            async move {
                let entries = tokio::task::spawn_blocking(move || log.after(room, 0, 1_000)).await.ok()?.ok()?;
                let texts: Vec<(u64, String)> = entries.into_iter().map(|m| (m.seq, m.text)).collect();
                texts.iter().all(|(seq, text)| (*seq != hello && *seq != edited) || text.is_empty()).then_some(texts)
            }
        })
        .await;
        assert!(texts.iter().all(|(_, text)| !text.contains("see this")), "node {node} on disk: {texts:?}");
    }

    // History gives each message's current state, and a client resuming from the start
    // that applies every entry sees exactly that.
    let history = history_view(&bob, &base, room).await;
    assert!(history[&hello].deleted && history[&hello].text.is_empty(), "{:?}", history[&hello]);
    assert_eq!(history[&hello].replies, 2);
    assert_eq!(history[&rest_seq].text, "via REST, edited");
    assert!(history[&rest_seq].edited);
    assert_eq!(history[&rest_seq].reactions["🎉"], BTreeSet::from(["alice".to_string()]));
    let mut fresh = WsClient::connect(&cluster.node(0).ws_url(), &bob_token).await;
    let (resumed, _) = fresh.subscribe(room, Some(0)).await;
    let mut resumed_view = BTreeMap::new();
    for frame in &resumed {
        apply(&mut resumed_view, frame);
    }
    assert_eq!(messages_only(&resumed_view, &history), history, "a resume from 0 equals the history");
    let page: Vec<u64> = resumed.iter().map(|f| f["seq"].as_u64().unwrap()).collect();
    assert_eq!(page, (1..=page.len() as u64).collect::<Vec<_>>(), "every entry once, in order");
}

/// Ops the failover test sends: ten of each kind.
const OPS: u64 = 40;

/// Op `i` (< [`OPS`]) of the failover test: edits, reactions and replies on messages
/// 1–10, deletes of messages 11–20 (so no op targets a deleted message).
fn op(room: u64, i: u64) -> Value {
    let client_id = format!("op{i}");
    let target = 1 + i % 10;
    match i % 4 {
        0 => {
            json!({"type": "edit", "room": room, "client_id": client_id, "target": target, "text": format!("edit {i}")})
        }
        1 => json!({"type": "react", "room": room, "client_id": client_id, "target": target, "emoji": "👍"}),
        2 => {
            json!({"type": "send", "room": room, "client_id": client_id, "text": format!("reply {i}"), "reply_to": target})
        }
        _ => json!({"type": "delete", "room": room, "client_id": client_id, "target": 11 + (i / 4) % 10}),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_view_equals_the_history_after_the_owner_dies_mid_events() {
    let mut cluster = ChatCluster::start(3).await;
    let base = cluster.url();
    let writer = Api::logged_in(&base, "writer").await;
    let room = cluster.create_room(&writer, "failover-events", false).await;
    let (room, owner) = (room["id"].as_u64().unwrap(), room["owner"].as_u64().unwrap());
    let replica = cluster.controls.catalog(0).rooms[&room].replica.expect("a replica");
    let third = (0..3).find(|i| ![owner, replica].contains(&cluster.node(*i).id())).expect("a third node");
    let (writer_token, _) = token(&writer, &base).await;
    // The writer and an observer sit on the node that neither owns nor copies the room.
    let mut w = Client::connect(&cluster.node(third).ws_url(), &writer_token, room).await;
    let mut observer = Client::connect(&cluster.node(third).ws_url(), &writer_token, room).await;
    for i in 1..=20 {
        let send = json!({"type": "send", "room": room, "client_id": format!("m{i}"), "text": format!("message {i}")});
        assert_eq!(w.change(send).await.expect("sent"), i);
    }
    for i in 0..16 {
        w.change(op(room, i)).await.expect("an op before the kill");
    }
    // A burst in flight when the owner dies: each is then retried with its client_id.
    for i in 16..28 {
        w.ws.send(op(room, i)).await;
    }
    cluster.stop_node(cluster.index_of(owner)).await;
    for i in 16..OPS {
        w.change(op(room, i)).await.unwrap_or_else(|e| panic!("op {i}: {e}"));
    }

    let history = history_view(&writer, &base, room).await;
    let epoch = cluster.controls.catalog(0).rooms[&room].epoch;
    assert!(epoch > 1, "the room moved to a new owner");
    // The observer's live view (with whatever catch-up the failover made it fetch),
    // applied in seq order.
    let newest = *history.keys().max().expect("messages");
    let log = cluster.room_log(replica, room).await;
    let end = log.last().map(|(seq, _)| *seq).expect("entries");
    assert!(end >= newest);
    let frames: Vec<Value> = {
        for seq in 1..=end {
            observer.message(seq).await;
        }
        observer.messages.values().cloned().collect()
    };
    let mut live = BTreeMap::new();
    for frame in &frames {
        apply(&mut live, frame);
    }
    assert_eq!(messages_only(&live, &history), history, "the observer's view equals the history");
    // A client resuming from the start sees the same.
    let mut fresh = WsClient::connect(&cluster.node(third).ws_url(), &writer_token).await;
    let (resumed, _) = fresh.subscribe(room, Some(0)).await;
    let mut resumed_view = BTreeMap::new();
    for frame in &resumed {
        apply(&mut resumed_view, frame);
    }
    assert_eq!(messages_only(&resumed_view, &history), history, "a resume from 0 equals the history");
    // Every op applied once: one entry per client_id in the new owner's log.
    let client_ids: Vec<&String> = log.iter().map(|(_, id)| id).collect();
    let unique: BTreeSet<&String> = client_ids.iter().copied().collect();
    assert_eq!(client_ids.len(), unique.len(), "no op applied twice");
    assert_eq!(log.len(), 20 + OPS as usize, "every message and op once");
    // Deleted texts are gone from the surviving copy on disk, not only from reads.
    let survivor = cluster.node(cluster.index_of(replica)).node.log.clone();
    for seq in 11..=20 {
        assert!(history[&seq].deleted, "message {seq} was deleted");
        let entry = survivor.entry(room, seq).expect("read the log").expect("the entry");
        assert_eq!(entry.text, "", "message {seq} on disk");
    }
}
