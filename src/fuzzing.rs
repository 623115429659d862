//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz, libFuzzer) and for the suite's
//! replay of their corpus (`tests/fuzz_corpus.rs`): each takes arbitrary bytes, feeds them
//! to the same parsing and applying code that meets hostile input in production, and
//! panics only when an invariant breaks. A decoding error is an answer, not a finding.
//!
//! Every target also checks a round trip: what decodes must encode and decode again to
//! the same value, so no input can make two members (or a node and its peer) read one
//! frame two ways. docs/RELIABILITY.md, "Fuzzing", lists the targets and their runs.

use std::path::Path;

use crate::control::catalog::{Catalog, Command};
use crate::control::raft::types::{MemberId, TypeConfig};
use crate::node::config::{Limits, NodeConfig};
use crate::node::subscription::{AfterPage, Subscription};
use crate::protocol::{ConnectionClaims, MeshEnvelope, MeshReply, Seq};
use crate::store;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};

/// A fuzz target's entry point.
pub type Target = fn(&[u8]);

/// The fuzz targets, by name: the name is the file in `fuzz/fuzz_targets/` and the folder
/// in `fuzz/corpus/`.
pub const TARGETS: [(&str, Target); 8] = [
    ("browser_frame", browser_frame),
    ("subscription_order", subscription_order),
    ("mesh_frame", mesh_frame),
    ("raft_rpc", raft_rpc),
    ("catalog_commands", catalog_commands),
    ("snapshot", snapshot),
    ("config_file", config_file),
    ("connection_token", connection_token),
];

/// A browser's text frame through the session's parser and checks (`node::frames`).
pub fn browser_frame(data: &[u8]) {
    // The WebSocket layer hands the session only valid UTF-8 text.
    let Ok(raw) = std::str::from_utf8(data) else { return };
    let limits = Limits::default();
    match crate::node::frames::parse(raw, &limits) {
        Ok(frame) => {
            let again = serde_json::to_string(&frame).expect("a parsed frame encodes");
            assert_eq!(crate::node::frames::parse(&again, &limits).ok(), Some(frame), "{raw:?} reads two ways");
        }
        Err(refused) => assert!(KNOWN_CODES.contains(&refused.code), "undocumented code {}", refused.code),
    }
}

/// One room's messages on one connection (`node::subscription`) against a log of
/// committed messages, in any order of events the bytes pick: live frames delivered,
/// dropped, repeated or late, catch-up pages read from copies that lag, failed fetches,
/// resyncs. Whatever happens, what the session writes is each seq at most once, in
/// order, with no hole, never past the log, and from `since + 1` when a `since` was given.
pub fn subscription_order(data: &[u8]) {
    let mut bytes = data.iter().copied();
    let mut committed = Seq::from(bytes.next().unwrap_or(0) % 16);
    let since = match bytes.next().unwrap_or(0) {
        choice if choice % 4 == 0 => None,
        choice => Some(Seq::from(choice) % (committed + 1)),
    };
    let mut subscription = Subscription::<Seq>::new();
    // The fetch the session has asked for and not had answered: `Some(None)` for the
    // room's last seq only.
    let mut fetch = Some(subscription.subscribe(since, 0));
    let mut written: Vec<Seq> = Vec::new();
    while let Some(op) = bytes.next() {
        let arg = bytes.next().unwrap_or(0);
        let out = match op % 6 {
            0 | 1 => {
                committed += 1;
                if op % 6 == 1 {
                    continue; // the delivery is lost
                }
                let (out, gap) = subscription.live(committed, committed, arg % 8 != 0);
                fetch = gap.map(Some).or(fetch);
                out
            }
            2 if committed > 0 => {
                let seq = 1 + Seq::from(arg) % committed;
                let (out, gap) = subscription.live(seq, seq, arg % 8 != 0);
                fetch = gap.map(Some).or(fetch);
                out
            }
            3 => {
                let Some(after) = fetch.take() else { continue };
                // The copy read may lag the log by a few messages.
                let readable = committed.saturating_sub(Seq::from(arg % 4));
                let page = Seq::from(1 + arg / 64);
                let (messages, has_more) = match after {
                    None => (Vec::new(), false),
                    Some(after) => {
                        let end = readable.min(after.saturating_add(page));
                        ((after + 1..=end).map(|seq| (seq, seq)).collect(), readable > end)
                    }
                };
                let (out, next) = subscription.page(messages, has_more, readable);
                if let AfterPage::Fetch { after, .. } = next {
                    fetch = Some(Some(after));
                }
                out
            }
            4 if fetch.take().is_some() => subscription.page_failed(),
            5 => {
                if let Some(after) = subscription.resync() {
                    fetch = Some(Some(after));
                }
                Vec::new()
            }
            _ => continue,
        };
        for seq in out {
            let expected = written.last().map(|last| last + 1).or(since.map(|since| since + 1));
            assert!(expected.is_none_or(|expected| seq == expected), "wrote {seq} after {written:?} (since {since:?})");
            assert!(seq <= committed, "wrote {seq}, past the log's {committed}");
            written.push(seq);
        }
    }
}

/// The codes `node::frames` may refuse a frame with (docs/PROTOCOL.md, "Error codes").
const KNOWN_CODES: [&str; 5] = ["frame_too_large", "invalid_json", "unknown_type", "bad_frame", "text_too_long"];

/// A binary mesh frame as a listener (an envelope) and as a dialer (a reply) decode it.
pub fn mesh_frame(data: &[u8]) {
    round_trip::<MeshEnvelope>(data);
    round_trip::<MeshReply>(data);
}

/// A Raft RPC body as a member decodes it (requests, under `/raft/`) and as its peer
/// decodes the answer; the first byte picks the type, the rest is the body.
pub fn raft_rpc(data: &[u8]) {
    let Some((kind, body)) = data.split_first() else { return };
    match kind % 6 {
        0 => round_trip::<AppendEntriesRequest<TypeConfig>>(body),
        1 => round_trip::<VoteRequest<MemberId>>(body),
        2 => round_trip::<InstallSnapshotRequest<TypeConfig>>(body),
        3 => round_trip::<Result<AppendEntriesResponse<MemberId>, openraft::error::RaftError<MemberId>>>(body),
        4 => round_trip::<Result<VoteResponse<MemberId>, openraft::error::RaftError<MemberId>>>(body),
        _ => round_trip::<
            Result<
                InstallSnapshotResponse<MemberId>,
                openraft::error::RaftError<MemberId, openraft::error::InstallSnapshotError>,
            >,
        >(body),
    }
}

/// Catalog commands, as a Raft log entry or `/internal/write` carries them, applied in
/// order to an empty catalog: `apply` must not panic, must give every member the same
/// catalog (applied twice, the same bytes), and the result must survive a snapshot.
pub fn catalog_commands(data: &[u8]) {
    let Ok(commands) = store::decode::<Vec<Command>>(data) else { return };
    let (mut one, mut two) = (Catalog::default(), Catalog::default());
    for command in commands {
        let (first, _) = one.apply(command.clone());
        let (second, _) = two.apply(command);
        assert_eq!(format!("{first:?}"), format!("{second:?}"), "apply gave two answers");
    }
    let bytes = store::encode(&one).expect("a catalog encodes");
    assert_eq!(bytes, store::encode(&two).expect("a catalog encodes"), "apply is not deterministic");
    let restored = crate::control::raft::state_machine::decode_catalog(&bytes).expect("its own snapshot decodes");
    assert_eq!(restored, one, "a snapshot does not give back the catalog");
}

/// A snapshot's data as a member installing it decodes it (every format it knows).
pub fn snapshot(data: &[u8]) {
    let Ok(catalog) = crate::control::raft::state_machine::decode_catalog(data) else { return };
    let bytes = store::encode(&catalog).expect("a catalog encodes");
    let again = crate::control::raft::state_machine::decode_catalog(&bytes).expect("a re-encoded snapshot decodes");
    assert_eq!(again, catalog, "a snapshot reads two ways");
}

/// A config file, as a control member and a chat node read theirs.
pub fn config_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = Path::new("fuzzed.toml");
    let _ = crate::config::ControlConfig::from_toml(text, path);
    let _ = NodeConfig::from_toml(text, path);
}

/// A connection token as a node checks a browser's `hello`: nothing but a token signed
/// with the key verifies, and a verified token carries what was signed.
pub fn connection_token(data: &[u8]) {
    let Ok(token) = std::str::from_utf8(data) else { return };
    let key = crate::token::derive_token_key(b"fuzzing signing key");
    if let Some(claims) = crate::token::verify(&key, token, 0) {
        assert_eq!(crate::token::verify(&key, &crate::token::sign(&key, &claims), 0), Some(claims));
    }
    let claims = ConnectionClaims { user_id: 7, username: token.to_string(), expires_ms: u64::MAX };
    let signed = crate::token::sign(&key, &claims);
    assert_eq!(crate::token::verify(&key, &signed, 0), Some(claims), "a signed token does not verify");
}

/// Decodes `data` as `T`; if it decodes, its encoding must decode to the same encoding.
fn round_trip<T: serde::Serialize + serde::de::DeserializeOwned>(data: &[u8]) {
    let Ok(value) = store::decode::<T>(data) else { return };
    let bytes = store::encode(&value).expect("a decoded value encodes");
    let again = store::decode::<T>(&bytes).expect("an encoded value decodes");
    assert_eq!(store::encode(&again).expect("encodes"), bytes, "{} reads two ways", std::any::type_name::<T>());
}
