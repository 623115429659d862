//! The fuzz targets' corpus, replayed on stable in the normal suite: every committed input
//! (seeds, and what the fuzzer kept or found: `fuzz/corpus/<target>/`, regressions in
//! `fuzz/regressions/<target>/`) runs through the target's entry point in
//! `districhat::fuzzing`, so a crash the fuzzer once found stays fixed without nightly.
//!
//! Each input must also stay within an allocation bound: no single allocation over
//! [`ALLOCATION_BOUND`] or 16 times the input's size. A length field inside hostile bytes
//! must not make a decoder reserve gigabytes (the fuzzer's first finding; docs/RELIABILITY.md).
//!
//! The seeds are built here from real values, so they follow the encodings: after a wire
//! or storage format change, `DISTRICHAT_WRITE_SEEDS=1 cargo test --test fuzz_corpus`
//! writes them anew (docs/RELIABILITY.md, "Fuzzing").

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use districhat::control::catalog::{Catalog, Command, ModAction, NodeStatus, ReadMark};
use districhat::control::raft::types::{Entry, LogId, TypeConfig, Vote};
use districhat::fuzzing::TARGETS;
use districhat::protocol::{
    Action, ConnectionClaims, EntryKind, LogQuery, MeshEnvelope, MeshReply, MeshRequest, MeshResponse, MessageState,
    Outgoing, ReadMessage,
};
use districhat::store::encode;
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use openraft::{CommittedLeaderId, EntryPayload};
use serde_json::json;

/// The largest single allocation any input may make, whatever its size.
const ALLOCATION_BOUND: usize = 1 << 20;

/// The system allocator, watching the largest single request since the last reset.
struct Watched;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on unchanged to the system allocator.
unsafe impl GlobalAlloc for Watched {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Watched = Watched;

#[test]
fn every_committed_input_runs_clean_through_its_target() {
    let mut ran = 0;
    for (target, run) in TARGETS {
        for folder in ["corpus", "regressions"] {
            for file in files(&fuzz_dir().join(folder).join(target)) {
                let input = std::fs::read(&file).expect("read an input");
                LARGEST.store(0, Ordering::Relaxed);
                run(&input);
                let largest = LARGEST.load(Ordering::Relaxed);
                let bound = ALLOCATION_BOUND.max(16 * input.len());
                assert!(largest <= bound, "{}: one allocation of {largest} bytes", file.display());
                ran += 1;
            }
        }
    }
    assert!(ran >= seeds().len(), "only {ran} inputs: is fuzz/corpus there?");
}

#[test]
fn the_committed_seeds_match_todays_encodings() {
    let write = std::env::var_os("DISTRICHAT_WRITE_SEEDS").is_some();
    for (target, name, bytes) in seeds() {
        assert!(TARGETS.iter().any(|(known, _)| *known == target), "no target {target}");
        let path = fuzz_dir().join("corpus").join(target).join(format!("seed-{name}"));
        if write {
            std::fs::create_dir_all(path.parent().expect("a folder")).expect("create the corpus folder");
            std::fs::write(&path, &bytes).expect("write a seed");
        }
        let committed = std::fs::read(&path).unwrap_or_default();
        assert!(
            committed == bytes,
            "{} is stale or missing; write the seeds anew: DISTRICHAT_WRITE_SEEDS=1 cargo test --test fuzz_corpus",
            path.display()
        );
    }
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_file()).collect();
    files.sort();
    files
}

/// (target, name, input): a valid example of each thing a target reads, for the fuzzer
/// to mutate from.
fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let mut seeds = Vec::new();
    for (name, frame) in [
        ("hello", json!({"type": "hello", "token": "eyJ1c2VyX2lkIjo3fQ.c2ln"})),
        ("subscribe", json!({"type": "subscribe", "room": 12, "since": 41})),
        ("unsubscribe", json!({"type": "unsubscribe", "room": 12})),
        ("send", json!({"type": "send", "room": 12, "client_id": "5f0c9a0e", "text": "hello, world"})),
        ("typing", json!({"type": "typing", "room": 12})),
        ("history", json!({"type": "history", "room": 12, "before": 90, "limit": 50})),
        ("reply", json!({"type": "send", "room": 12, "client_id": "c2", "text": "@ann yes", "reply_to": 43})),
        ("edit", json!({"type": "edit", "room": 12, "client_id": "c3", "target": 43, "text": "fixed"})),
        ("delete", json!({"type": "delete", "room": 12, "client_id": "c4", "target": 43})),
        ("react", json!({"type": "react", "room": 12, "client_id": "c5", "target": 43, "emoji": "👍"})),
        ("thread", json!({"type": "thread", "room": 12, "root": 43})),
        ("mentions", json!({"type": "mentions", "room": 12, "after": 40})),
    ] {
        seeds.push(("browser_frame", name, frame.to_string().into_bytes()));
    }

    // (log length, since choice, then op/arg pairs: 0 live, 1 lost, 2 repeated, 3 page,
    // 4 failed fetch, 5 resync.)
    for (name, events) in [
        ("resume", vec![5, 3, 3, 0, 0, 1, 3, 64, 0, 1]),
        ("lost-then-gap", vec![2, 0, 3, 0, 0, 1, 1, 0, 0, 1, 3, 0, 2, 1]),
        ("lagging-copy", vec![9, 2, 0, 1, 3, 3, 0, 1, 3, 0, 3, 0, 5, 0, 3, 0]),
        ("failed-fetch", vec![4, 1, 0, 1, 4, 0, 0, 1, 1, 0, 0, 1, 3, 0]),
    ] {
        seeds.push(("subscription_order", name, events));
    }

    let message = districhat::protocol::StoredMessage {
        seq: 3,
        sender_id: 7,
        sender: "ada".into(),
        text: "hello".into(),
        ts: 1_700_000_000_000,
        client_id: "c1".into(),
        kind: EntryKind::Message { reply_to: Some(1), mentions: vec!["bob".into()] },
    };
    let reaction = districhat::protocol::StoredMessage {
        seq: 4,
        text: String::new(),
        client_id: "c2".into(),
        kind: EntryKind::React { target: 3, emoji: "👍".into(), on: true },
        ..message.clone()
    };
    let action = Action::Message { text: "hello".into(), reply_to: None };
    let outgoing = Outgoing { user_id: 7, username: "ada".into(), client_id: "c1".into(), action };
    for (name, request) in [
        ("send", MeshRequest::Send { room: 12, message: outgoing }),
        (
            "replicate",
            MeshRequest::Replicate {
                room: 12,
                epoch: 2,
                prev: None,
                committed: 2,
                messages: vec![message.clone(), reaction.clone()],
            },
        ),
        ("backfill", MeshRequest::Backfill { room: 12, epoch: 2, messages: vec![message.clone()] }),
        ("fetch", MeshRequest::Fetch { room: 12, after: Some(2), before: None, limit: 100 }),
        ("thread", MeshRequest::Query { room: 12, query: LogQuery::Thread { root: 3 } }),
        ("deliver", MeshRequest::Deliver { room: 12, frames: vec![(3, "{}".into())], sequenced_ms: 5 }),
    ] {
        let envelope = MeshEnvelope { id: 9, request };
        let bytes = encode(&envelope).unwrap();
        // A seed the node itself cannot read would fuzz nothing (an internally tagged
        // enum, which bincode cannot decode, once slipped onto the mesh this way).
        let decoded: MeshEnvelope = districhat::store::decode_exact(&bytes).expect("a mesh seed decodes");
        assert_eq!(decoded, envelope, "{name}");
        seeds.push(("mesh_frame", name, bytes));
    }
    let state =
        MessageState { edited: true, reactions: vec![("👍".into(), vec!["ada".into()])], ..Default::default() };
    let read = ReadMessage { message, state };
    let reply = MeshResponse::Messages { messages: vec![read], has_more: false, last_seq: 3 };
    seeds.push(("mesh_frame", "messages", encode(&MeshReply { id: 9, response: reply }).unwrap()));

    let commands = catalog_commands();
    let vote = Vote::new(2, 1);
    let entries: Vec<Entry> = commands
        .iter()
        .enumerate()
        .map(|(i, command)| Entry {
            log_id: LogId::new(CommittedLeaderId::new(2, 1), i as u64 + 1),
            payload: EntryPayload::Normal(command.clone()),
        })
        .collect();
    let append: AppendEntriesRequest<TypeConfig> =
        AppendEntriesRequest { vote, prev_log_id: None, entries, leader_commit: None };
    seeds.push(("raft_rpc", "append", [vec![0], encode(&append).unwrap()].concat()));
    let ask = VoteRequest::new(vote, Some(LogId::new(CommittedLeaderId::new(1, 1), 4)));
    seeds.push(("raft_rpc", "vote", [vec![1], encode(&ask).unwrap()].concat()));

    seeds.push(("catalog_commands", "setup", encode(&commands).unwrap()));
    let mut catalog = Catalog::default();
    for command in commands {
        let (result, _) = catalog.apply(command.clone());
        assert!(result.is_ok(), "{command:?}: {result:?}");
    }
    seeds.push(("snapshot", "catalog", encode(&catalog).unwrap()));

    for name in ["c1.toml", "n1.toml"] {
        let text = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster").join(name)).unwrap();
        seeds.push(("config_file", if name == "c1.toml" { "control" } else { "node" }, text));
    }
    let key = districhat::token::derive_token_key(b"fuzzing signing key");
    let claims = ConnectionClaims { user_id: 7, username: "ada".into(), expires_ms: 1_700_000_000_000 };
    seeds.push(("connection_token", "signed", districhat::token::sign(&key, &claims).into_bytes()));
    seeds
}

/// A catalog's life in brief: a key, users, nodes, rooms, a DM, an assignment, marks, a
/// replica in sync, an ended session and a node going down.
fn catalog_commands() -> Vec<Command> {
    let node = |name: &str| Command::RegisterNode {
        name: name.into(),
        ws_url: format!("ws://{name}.example/ws"),
        mesh_addr: format!("{name}.example:7100"),
        approved: true,
        at_ms: 10,
    };
    let user =
        |name: &str| Command::CreateUser { username: name.into(), password_hash: "$argon2id$x".into(), at_ms: 5 };
    vec![
        Command::SetSigningKey { key: vec![7; 32] },
        user("ada"),
        user("bob"),
        node("n1"),
        node("n2"),
        Command::CreateRoom { name: "general".into(), private: false, created_by: 1, at_ms: 20 },
        Command::CreateRoom { name: "inner".into(), private: true, created_by: 1, at_ms: 21 },
        Command::AddMember { room: 2, user: 2 },
        Command::AssignRoom { room: 1, owner: 1, replica: Some(2), epoch: 1 },
        Command::CreateDm { a: 1, b: 2, at_ms: 30 },
        Command::MarkRead { marks: vec![ReadMark { user: 1, room: 1, seq: 4 }] },
        Command::ReplicasInSync { node: 1, rooms: vec![(1, 1)] },
        Command::EndSession { user: 2, expires_ms: 99, at_ms: 40 },
        Command::SetNodeStatus { node: 2, status: NodeStatus::Down },
        user("cyd"),
        Command::AddMember { room: 1, user: 3 },
        Command::Moderate { room: 1, by: 1, user: 3, action: ModAction::Mute { until_ms: 900 }, at_ms: 50 },
        Command::Moderate { room: 1, by: 1, user: 3, action: ModAction::Ban, at_ms: 51 },
        Command::CreateGroupDm {
            created_by: 1,
            members: vec![2, 3],
            title: Some("trio".into()),
            share_history: false,
            at_ms: 52,
        },
        Command::AddGroupMember { room: 4, by: 2, user: 3, last_seq: 7, at_ms: 53 },
    ]
}
