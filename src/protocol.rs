//! Wire types, no logic: browser WebSocket frames (JSON, tagged by `type`), mesh frames
//! between chat nodes (bincode), and the internal control ↔ node API (JSON over HTTP,
//! cluster secret required). docs/PROTOCOL.md shows an example of every browser frame.

use serde::{Deserialize, Serialize};

pub type UserId = u64;
pub type RoomId = u64;
pub type NodeId = u64;
pub type Seq = u64;

// ---------------------------------------------------------------------------------------
// Browser ↔ node (WebSocket `/ws`, JSON text frames)
// ---------------------------------------------------------------------------------------

/// A frame a browser sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// First frame: the connection token from `GET /api/token`.
    Hello {
        token: String,
    },
    /// Start receiving a room; with `since`, first every message after that seq.
    Subscribe {
        room: RoomId,
        #[serde(default)]
        since: Option<Seq>,
    },
    Unsubscribe {
        room: RoomId,
    },
    /// Post a message, a reply in the thread of `reply_to` if given. `client_id` makes
    /// retries idempotent (for every frame that changes the log).
    Send {
        room: RoomId,
        client_id: String,
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<Seq>,
    },
    /// Replace the text of one's own message `target`.
    Edit {
        room: RoomId,
        client_id: String,
        target: Seq,
        text: String,
    },
    /// Delete message `target` (one's own; any, for the room's moderators): its text is
    /// erased from every copy of the log.
    Delete {
        room: RoomId,
        client_id: String,
        target: Seq,
    },
    /// Toggle one's reaction `emoji` (one of [`REACTIONS`]) on message `target`.
    React {
        room: RoomId,
        client_id: String,
        target: Seq,
        emoji: String,
    },
    /// The replies in the thread of message `root`, oldest first.
    Thread {
        room: RoomId,
        root: Seq,
    },
    /// The messages of the room after `after` that mention this user (or `@room`), oldest
    /// first, at most 100: the mention count of a room is their number after the read mark.
    Mentions {
        room: RoomId,
        #[serde(default)]
        after: Seq,
    },
    Typing {
        room: RoomId,
    },
    /// Older messages, newest first, before `before` (exclusive).
    History {
        room: RoomId,
        #[serde(default)]
        before: Option<Seq>,
        #[serde(default)]
        limit: Option<u32>,
    },
}

/// The reactions a message may get (a small fixed set, so every page can show them).
pub const REACTIONS: [&str; 8] = ["👍", "❤️", "😂", "🎉", "😮", "😢", "👀", "✅"];

/// A stored or live log entry as browsers see it: a message, or an event on an earlier
/// message (`kind` and `target`). Read from history, catch-up and threads, a message
/// carries its current state (`edited`, `deleted`, `reactions`, `replies`): applying
/// the events that follow it again changes nothing (docs/PROTOCOL.md, "Message events").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub room: RoomId,
    pub seq: Seq,
    /// `"{room}:{seq}"`, unique in the cluster.
    pub id: String,
    pub sender: String,
    pub sender_id: UserId,
    /// The text; for an `edit`, the new text; empty for `delete`, `reaction` and for a
    /// deleted message.
    pub text: String,
    /// Milliseconds since the Unix epoch, set by the room's owner.
    pub ts: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "EntryKindName::is_message")]
    pub kind: EntryKindName,
    /// The message an `edit`, `delete` or `reaction` changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Seq>,
    /// A `reaction`: which one, and whether the sender added (`true`) or took it back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emoji: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<bool>,
    /// A reply: the seq of its thread's root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<Seq>,
    /// Usernames the message mentions, and `@room` when a moderator mentioned everyone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub edited: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reactions: Vec<ReactionCount>,
    /// How many replies the message's thread has, and the seq of the newest: a reply
    /// entry at or below it is already counted (docs/PROTOCOL.md, "Message events").
    #[serde(default, skip_serializing_if = "is_zero")]
    pub replies: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reply: Option<Seq>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What a log entry is, as browsers see it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKindName {
    #[default]
    Message,
    Edit,
    Delete,
    Reaction,
    /// A line the cluster wrote: a moderation act.
    System,
}

impl EntryKindName {
    fn is_message(&self) -> bool {
        *self == Self::Message
    }
}

/// One reaction on a message and who gave it, in the order they did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReactionCount {
    pub emoji: String,
    pub users: Vec<String>,
}

/// A frame a node sends to a browser.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Welcome {
        user: String,
        user_id: UserId,
        node: NodeId,
    },
    /// Subscribed; every message up to `seq` has been sent, live ones follow.
    Subscribed {
        room: RoomId,
        seq: Seq,
    },
    Message(ChatMessage),
    Ack {
        client_id: String,
        room: RoomId,
        seq: Seq,
    },
    /// Who is in the room now (full list, on every change).
    Presence {
        room: RoomId,
        users: Vec<String>,
    },
    Typing {
        room: RoomId,
        user: String,
    },
    History {
        room: RoomId,
        messages: Vec<ChatMessage>,
        has_more: bool,
    },
    /// The answer to a `thread` frame: the root and its replies, oldest first.
    Thread {
        room: RoomId,
        root: Seq,
        messages: Vec<ChatMessage>,
    },
    /// The answer to a `mentions` frame.
    Mentions {
        room: RoomId,
        after: Seq,
        messages: Vec<ChatMessage>,
        has_more: bool,
    },
    Error {
        code: String,
        message: String,
        /// The `client_id` or room the error is about, when there is one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        r#ref: Option<String>,
    },
}

// ---------------------------------------------------------------------------------------
// Node ↔ control (HTTP JSON, header `x-districhat-secret`)
// ---------------------------------------------------------------------------------------

/// `POST /internal/nodes/register`: a node announces itself (again after a restart).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterNode {
    /// Stable name from the node's config (`n1`); re-registering keeps the id.
    pub name: String,
    /// `host:port` that browsers (`ws://ADDR/ws`) and other nodes (`/mesh`) reach.
    pub addr: String,
    /// The URL browsers open instead of `ws://ADDR/ws`: a TLS proxy's `wss://…/ws`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ws_url: Option<String>,
}

/// The answer to [`RegisterNode`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRegistration {
    pub node_id: NodeId,
    /// `false` while an admin has not approved the node: it must not serve yet.
    pub approved: bool,
    /// HMAC key for connection tokens (derived from the catalog's signing key).
    pub token_key: Vec<u8>,
}

/// What a node reports about itself once a second.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeLoad {
    pub connections: u64,
    pub rooms_owned: u64,
    pub rooms_replicated: u64,
    pub messages_per_sec: f64,
    /// Rooms of its routing table the node owns but does not take sends for yet: the owner
    /// is still starting (making its replica adopt the epoch and copying it the log). A
    /// rebalance starts its next batch only when this is 0 on every node. Absent (0) from
    /// nodes older than it.
    #[serde(default)]
    pub rooms_syncing: u64,
}

/// `POST /internal/nodes/heartbeat`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node_id: NodeId,
    pub load: NodeLoad,
    /// Version of the routing table the node holds (0 = none).
    pub routes_version: u64,
    /// (room, epoch) of rooms this node owns whose replica it has synced at that epoch
    /// and the routing table does not show in sync yet (`ReplicasInSync`).
    #[serde(default)]
    pub in_sync: Vec<(RoomId, u64)>,
    /// The node applies [`RoutingDelta`]s: the leader may answer with what changed since
    /// `routes_version` instead of the whole table. False (whole tables) for older nodes.
    #[serde(default)]
    pub deltas: bool,
}

/// The answer to a [`Heartbeat`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum HeartbeatReply {
    /// Accepted by the leader. When the node's version is outdated, either `routes` is
    /// the whole table or (for a node that takes deltas, when the leader knows every
    /// change since the node's version) `delta` is what changed; both `None` otherwise.
    Ok {
        routes: Option<RoutingTable>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delta: Option<Box<RoutingDelta>>,
        /// The node's table is outdated by more than a heartbeat should carry: it fetches
        /// the whole table with `GET /internal/routes`, outside the heartbeat's deadline
        /// (only for nodes that take deltas; older ones get `routes`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        fetch: bool,
    },
    /// The receiver is not the leader; send heartbeats to `leader` (`host:port`).
    NotLeader { leader: Option<String> },
    /// The node is unknown (or was removed): register again.
    Unknown,
}

/// Where every room lives, as of one catalog version (the Raft applied index).
/// Also served whole by `GET /internal/routes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutingTable {
    pub version: u64,
    pub nodes: Vec<NodeRoute>,
    pub rooms: Vec<RoomRoute>,
    /// The key connection tokens are checked with (it changes only with `admin
    /// after-restore`; a new version of the table carries the new key).
    pub token_key: Vec<u8>,
    /// The cluster's admins: they moderate every room.
    #[serde(default)]
    pub admins: Vec<UserId>,
}

/// What changed in the routing table from version `from` to `version`: every room and
/// node whose route differs (or may differ) between the two, as it is at `version`, the
/// ones gone since, and the small parts (token key, admins) whole. Applied to the table
/// at exactly `from`, it gives the table at `version`; a node holding any other version
/// fetches the whole table instead (docs/PROTOCOL.md, "Routing-table deltas").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutingDelta {
    pub from: u64,
    pub version: u64,
    pub nodes: Vec<NodeRoute>,
    pub rooms: Vec<RoomRoute>,
    pub removed_nodes: Vec<NodeId>,
    pub removed_rooms: Vec<RoomId>,
    pub token_key: Vec<u8>,
    pub admins: Vec<UserId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRoute {
    pub id: NodeId,
    pub addr: String,
    /// The node serves its browser sessions: `up` or `drained` in the catalog (a drained
    /// node takes no new rooms or connections, but keeps the ones it has; one that went
    /// silent is `drained_down`, not up). Nodes deliver
    /// to it, dial it, and count its users in presence only while this holds.
    pub up: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomRoute {
    pub id: RoomId,
    pub owner: Option<NodeId>,
    pub replica: Option<NodeId>,
    pub epoch: u64,
    /// The catalog counts the replica as holding the whole log at this epoch (its owner
    /// said so): until then the owner keeps reporting it (docs/REPLICATION.md).
    #[serde(default)]
    pub replica_in_sync: bool,
    pub private: bool,
    /// Members, listed for private rooms only (public rooms are open to every user).
    pub members: Vec<UserId>,
    /// Users who may moderate the room: its owner (creator) and the moderators it named.
    /// The cluster's admins (`RoutingTable::admins`) moderate every room too.
    #[serde(default)]
    pub moderators: Vec<UserId>,
    /// Users banned from the room: refused on every path with `banned`.
    #[serde(default)]
    pub banned: Vec<UserId>,
    /// Users muted in the room, each until a time (milliseconds since the Unix epoch):
    /// their sends and message events are refused with `muted` until then.
    #[serde(default)]
    pub muted: Vec<(UserId, u64)>,
    /// Members of a group DM added without its history: each sees only the messages
    /// after this seq (the room's last seq when they were added).
    #[serde(default)]
    pub history_from: Vec<(UserId, Seq)>,
}

/// A node's answer to `GET /internal/rooms/{id}/messages?before=&limit=` (history for the
/// control's REST API; the control has already checked access).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPage {
    pub messages: Vec<ChatMessage>,
    pub has_more: bool,
}

/// The connection token's contents (signed by the control, checked by nodes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionClaims {
    pub user_id: UserId,
    pub username: String,
    /// Milliseconds since the Unix epoch.
    pub expires_ms: u64,
}

// ---------------------------------------------------------------------------------------
// Node ↔ node (WebSocket `/mesh`, bincode binary frames)
// ---------------------------------------------------------------------------------------

/// An entry as a room's log stores and replicates it (the room is in the key): a message,
/// or an event on an earlier one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    pub seq: Seq,
    pub sender_id: UserId,
    pub sender: String,
    /// A message's text, an edit's new text; empty for other events and once redacted.
    pub text: String,
    pub ts: u64,
    /// The sender's idempotency key; with (room, sender_id) it forms the dedupe key.
    pub client_id: String,
    /// Added after the first release: entries stored before it read as plain messages
    /// (`node::log` decodes both layouts).
    pub kind: EntryKind,
}

/// What a log entry is (docs/REPLICATION.md, "Message events").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// A message; `reply_to` is its thread's root, `mentions` the usernames it mentions
    /// (and `@room`), recognised by the owner when it sequenced the message.
    Message {
        reply_to: Option<Seq>,
        mentions: Vec<String>,
    },
    Edit {
        target: Seq,
    },
    /// Deleting `target`: once committed, the target's text and its edits' texts are
    /// erased from this log (a redaction write).
    Delete {
        target: Seq,
    },
    /// The sender's reaction `emoji` on `target` is now `on` (the owner resolved the
    /// toggle when it sequenced it, so applying an entry twice changes nothing).
    React {
        target: Seq,
        emoji: String,
        on: bool,
    },
    /// A line the control plane wrote (a moderation act).
    System,
}

impl EntryKind {
    /// A plain message: no thread, no mentions.
    pub fn message() -> Self {
        Self::Message { reply_to: None, mentions: Vec::new() }
    }

    /// The message an event changes.
    pub fn target(&self) -> Option<Seq> {
        match self {
            Self::Edit { target } | Self::Delete { target } | Self::React { target, .. } => Some(*target),
            Self::Message { .. } | Self::System => None,
        }
    }
}

/// A message's state folded from the events after it, up to a read's commit point.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageState {
    pub edited: bool,
    pub deleted: bool,
    /// (emoji, users) in the order the reactions were first given.
    pub reactions: Vec<(String, Vec<String>)>,
    pub replies: u64,
    pub last_reply: Option<Seq>,
}

/// An entry as a read returns it: with the current text (an edit's, or none once deleted)
/// and, for a message, its folded state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadMessage {
    pub message: StoredMessage,
    pub state: MessageState,
}

/// What identifies one stored message: two logs agree at `seq` when their stamps are
/// equal. Plain fields, not a hash, so the comparison is stable across builds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageStamp {
    pub seq: Seq,
    pub sender_id: UserId,
    pub client_id: String,
    pub ts: u64,
}

/// A change on its way to its room's owner, before it has a seq.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outgoing {
    pub user_id: UserId,
    pub username: String,
    /// The sender's idempotency key.
    pub client_id: String,
    pub action: Action,
}

/// What a sender asks a room's owner to append. The owner checks it against its log
/// (the target exists and is not deleted; only its author edits it; the author or a
/// moderator deletes it) and turns it into an [`EntryKind`]. Externally tagged (bincode
/// on the mesh cannot read an internally tagged enum): `{"edit": {"target": 3, "text":
/// "…"}}` in JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Message {
        text: String,
        reply_to: Option<Seq>,
    },
    Edit {
        target: Seq,
        text: String,
    },
    Delete {
        target: Seq,
    },
    React {
        target: Seq,
        emoji: String,
    },
    /// Control plane only (`POST /internal/rooms/{id}/events`).
    System {
        text: String,
    },
}

/// `POST /internal/rooms/{id}/events` on a node: append `action` for this user, who the
/// control has already checked may write the room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostEvent {
    pub user_id: UserId,
    pub username: String,
    pub client_id: String,
    pub action: Action,
}

/// The answer to [`PostEvent`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostedEvent {
    pub seq: Seq,
    pub duplicate: bool,
}

/// A frame the dialing node sends on a mesh link. `id` 0 means no reply is wanted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshEnvelope {
    pub id: u64,
    pub request: MeshRequest,
}

/// What one node asks of another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MeshRequest {
    /// To the room's owner: sequence, persist, replicate and acknowledge a message.
    Send { room: RoomId, message: Outgoing },
    /// To the room's replica: store these messages (in seq order). Refused when `epoch`
    /// is older than the newest epoch the replica has seen for the room, and when the
    /// replica does not hold `prev` — the entry the messages follow, `None` when they
    /// start at seq 1 — exactly (log matching: a replica never gets a hole, and never
    /// appends to a log that differs from the owner's). `committed` is the owner's commit
    /// point before these messages: every seq up to it is acknowledged, so the replica may
    /// serve reads up to it. See docs/REPLICATION.md.
    Replicate { room: RoomId, epoch: u64, prev: Option<MessageStamp>, committed: Seq, messages: Vec<StoredMessage> },
    /// To a new replica from a new owner: adopt `epoch`, drop everything after `base`
    /// (entries past it never reached the owner, so they were never acknowledged), and
    /// answer with the last seq kept and the stamps of the last messages kept. An owner
    /// that finds a stamp differing from its own log at seq `d` adopts again with
    /// `base = d - 1`.
    Adopt { room: RoomId, epoch: u64, base: Seq },
    /// To a replica that adopted `epoch` and whose log ends at `after`, far behind the
    /// owner: store `message` (the owner's last entry) and record that everything between
    /// is missing, to be filled in by [`MeshRequest::Backfill`] while the owner takes
    /// sends (docs/REPLICATION.md, "Background copy"). Refused unless the replica's fence
    /// is `epoch` and its log still ends at `after`.
    Seed { room: RoomId, epoch: u64, after: Seq, message: StoredMessage },
    /// To a replica with a missing range, at `epoch`: older entries of the owner's log,
    /// ascending, starting at the range's first seq. Stored only if they fit the range
    /// exactly; either way the answer says what is still missing.
    Backfill { room: RoomId, epoch: u64, messages: Vec<StoredMessage> },
    /// To the owner: these users of node `node` follow the room (empty: none any more).
    Interest { room: RoomId, node: NodeId, users: Vec<String> },
    /// To the owner: someone is typing.
    Typing { room: RoomId, username: String },
    /// To the owner (or replica): messages after `after` (ascending) or before `before`
    /// (newest first), at most `limit`.
    Fetch { room: RoomId, after: Option<Seq>, before: Option<Seq>, limit: u32 },
    /// To the owner (or replica): a thread, or a user's mentions (answered with
    /// [`MeshResponse::Messages`]).
    Query { room: RoomId, query: LogQuery },
    /// Owner to a subscribed node: pre-serialised browser frames for the room. `seq` is
    /// the message seq for `message` frames and 0 for ephemeral ones (typing, presence).
    /// `sequenced_ms` is when the owner sequenced live messages (wall clock, for the
    /// delivery-latency histogram), 0 for catch-up and ephemeral frames.
    Deliver { room: RoomId, frames: Vec<(Seq, String)>, sequenced_ms: u64 },
}

/// A read of a room's log other than a range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogQuery {
    /// Message `root` and the replies in its thread, oldest first.
    Thread { root: Seq },
    /// Messages after `after` mentioning `user` or `@room`, at most `limit`: the oldest
    /// of them, ascending (a mention count from a read mark), or the newest, newest first.
    Mentions { user: String, after: Seq, limit: u32, newest: bool },
}

/// The answer to a [`MeshEnvelope`] with a non-zero id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshReply {
    pub id: u64,
    pub response: MeshResponse,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MeshResponse {
    /// The message's seq; `duplicate` when the client_id was seen before.
    Sent {
        seq: Seq,
        ts: u64,
        duplicate: bool,
    },
    /// The replica stored everything up to `seq`.
    Stored {
        seq: Seq,
    },
    /// The replica's last seq after adopting, and the stamps of its last messages (at
    /// most the owner's largest batch, ascending) so the owner can find entries that
    /// differ from its own log at the same seqs (a stale tail) and drop those too.
    /// `missing`: seqs below `last_seq` the replica still lacks (an interrupted background
    /// copy), first and last.
    Adopted {
        last_seq: Seq,
        tail: Vec<MessageStamp>,
        missing: Option<(Seq, Seq)>,
    },
    /// The answer to [`MeshRequest::Seed`] and [`MeshRequest::Backfill`]: what the
    /// replica still lacks, first and last seq (`None`: it holds the whole log).
    Copied {
        missing: Option<(Seq, Seq)>,
    },
    Messages {
        messages: Vec<ReadMessage>,
        has_more: bool,
        last_seq: Seq,
    },
    Error {
        code: String,
        message: String,
    },
}
