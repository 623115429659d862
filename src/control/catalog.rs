//! The catalog: the control plane's replicated state and its one `apply`.
//!
//! Every change to users, the token-signing key, the chat-node registry, rooms,
//! memberships and room assignments is a [`Command`]. Commands travel through the Raft
//! log (bincode) and [`Catalog::apply`] validates each one again on every member, so a
//! duplicate username or a stale epoch is a typed [`CatalogError`] for the client,
//! never a panic and never a silent overwrite. `apply` is deterministic: ids come from
//! counters in the catalog and timestamps come inside the command.
//!
//! The chat-node lifecycle (registration, approval, failure, return) and the placement of
//! rooms on nodes live in the [`nodes`] submodule: they are the part of `apply` that moves
//! rooms between nodes. Spreading rooms over the nodes on an operator's request
//! (`Rebalance`) lives in [`balance`]. Room moderation (roles, mute, kick, ban, the audit
//! list) and group DMs live in [`moderation`].

mod balance;
mod moderation;
mod nodes;
mod sessions;

pub use moderation::{
    AuditEntry, GroupDm, ModAction, RoomPolicy, ADMIN_USER, AUDIT_KEEP, GROUP_DM_MAX, GROUP_DM_MIN, GROUP_DM_PREFIX,
    MAX_MUTE_MS,
};

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub type UserId = u64;
pub type RoomId = u64;
pub type ChatNodeId = u64;

/// A registered account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: UserId,
    pub username: String,
    /// argon2id PHC string; the plain password never enters the log.
    pub password_hash: String,
    pub created_at_ms: u64,
}

/// A chat room and where it lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Room {
    pub id: RoomId,
    pub name: String,
    /// Private rooms are readable and writable by members only.
    pub private: bool,
    pub created_by: UserId,
    pub created_at_ms: u64,
    /// The chat node that sequences this room; `None` until a node exists.
    pub owner: Option<ChatNodeId>,
    /// The chat node holding the second copy of the room's log.
    pub replica: Option<ChatNodeId>,
    /// Bumped on every reassignment, so a replica can fence a stale owner.
    pub epoch: u64,
}

/// Room names with this prefix belong to direct messages (`dm-{low id}-{high id}`);
/// `CreateRoom` refuses them, so a room named so is always a DM.
pub const DM_PREFIX: &str = "dm-";

impl Room {
    /// Whether this room is a 1:1 direct-message room (private, exactly two members,
    /// closed). Group DMs (`dm-g{id}`, [`Room::is_group_dm`]) are not.
    pub fn is_dm(&self) -> bool {
        self.private && self.name.starts_with(DM_PREFIX) && !self.name.starts_with(GROUP_DM_PREFIX)
    }
}

/// The name of the DM room between two users (the same whichever order they come in).
pub fn dm_name(a: UserId, b: UserId) -> String {
    format!("{DM_PREFIX}{}-{}", a.min(b), a.max(b))
}

/// Whether a chat node may serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeStatus {
    /// Registered, waiting for an admin's approval.
    Pending,
    Up,
    Down,
    /// Taken out of service by an operator (`DrainNode`): alive and reachable, but it owns
    /// and replicates nothing, gets no new rooms and is not offered to browsers. Only
    /// `UndrainNode` (or `SetNodeStatus Up`) brings it back; a heartbeat or a
    /// re-registration does not. Appended last: the variant index travels in bincode.
    Drained,
    /// A drained node that went silent (it crashed, or was stopped to retire it): down in
    /// every routing table, still out of service. Its heartbeat or registration makes it
    /// `Drained` again, never `Up` (docs/REPLICATION.md, "A drained node that goes
    /// silent"). Appended last, as `Drained`.
    DrainedDown,
}

/// A chat node in the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatNode {
    pub id: ChatNodeId,
    pub name: String,
    /// Where browsers connect (`ws://host:port/ws`).
    pub ws_url: String,
    /// `host:port` of the node's HTTP server: other nodes open mesh links there and the
    /// controls ask it for history (`/internal/rooms/{id}/messages`).
    pub mesh_addr: String,
    pub status: NodeStatus,
    pub registered_at_ms: u64,
}

/// Catalog-wide values that are not rows of a table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogMeta {
    pub next_user_id: UserId,
    pub next_room_id: RoomId,
    pub next_node_id: ChatNodeId,
    /// HMAC key for session and connection tokens, set once after bootstrap.
    pub signing_key: Option<Vec<u8>>,
}

/// Every change the catalog accepts. A closed set: adding a change means adding a variant
/// here and its validation in [`Catalog::apply`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    SetSigningKey {
        key: Vec<u8>,
    },
    CreateUser {
        username: String,
        password_hash: String,
        at_ms: u64,
    },
    CreateRoom {
        name: String,
        private: bool,
        created_by: UserId,
        at_ms: u64,
    },
    AddMember {
        room: RoomId,
        user: UserId,
    },
    /// A node announces itself. Idempotent per `name`: a known name keeps its id and gets
    /// the new addresses; a `Down` node comes back `Up`, a `Pending` one stays pending.
    /// `approved` is false when the cluster requires an admin's approval for new nodes.
    RegisterNode {
        name: String,
        ws_url: String,
        mesh_addr: String,
        approved: bool,
        at_ms: u64,
    },
    /// A raw status change by an operator; `Down` and `Pending` move the node's rooms away
    /// exactly like [`Command::NodeDown`], `Up` brings it in like [`Command::NodeUp`].
    SetNodeStatus {
        node: ChatNodeId,
        status: NodeStatus,
    },
    /// Moves a room to a new owner/replica; `epoch` must be the room's current epoch.
    AssignRoom {
        room: RoomId,
        owner: ChatNodeId,
        replica: Option<ChatNodeId>,
        epoch: u64,
    },
    // New variants go last: commands are stored in the Raft log by variant index.
    /// The leader's failure detector found the node silent: mark it `Down` and fail its
    /// rooms over (the replica becomes owner, a new replica is picked; epoch + 1 each).
    NodeDown {
        node: ChatNodeId,
    },
    /// An admin approves a `Pending` node: it becomes `Up` and takes rooms.
    ApproveNode {
        node: ChatNodeId,
    },
    /// A `Down` node heartbeats again: it becomes `Up`, a candidate for new rooms and
    /// replicas, and the replica of every room that has none.
    NodeUp {
        node: ChatNodeId,
    },
    /// The private room of exactly `a` and `b`, created on first use (idempotent).
    CreateDm {
        a: UserId,
        b: UserId,
        at_ms: u64,
    },
    /// Read positions, batched by a control (one write per flush, not one per message
    /// read). A mark only moves forward, and only for a member (not banned) of an existing room; the
    /// others in the batch are skipped, not refused, so one stale mark cannot fail the rest.
    MarkRead {
        marks: Vec<ReadMark>,
    },
    /// An operator drains the node: it becomes `Drained` and every room it owns moves to
    /// that room's replica, every room it replicates gets another replica (epoch + 1
    /// each), exactly like [`Command::NodeDown`]. Refused with `no_capacity`, changing
    /// nothing, when some room would be left without an `Up` owner and replica.
    DrainNode {
        node: ChatNodeId,
    },
    /// An operator puts a `Drained` node back in service: it becomes `Up` (like
    /// [`Command::NodeUp`]); rooms already moved stay where they are.
    UndrainNode {
        node: ChatNodeId,
    },
    /// The step after a whole-control-plane restore (`districhat admin after-restore`):
    /// replaces the token-signing key, so every session and connection token signed
    /// before (with the restored key) stops working, and moves the three id counters
    /// forward by `id_gap`, so no id handed out after the backup (a user whose old token
    /// would then name someone else, a room whose messages still sit in the nodes' logs
    /// under its id) is ever handed out again. Safe to repeat: ids only skip further.
    RecoverFromRestore {
        signing_key: Vec<u8>,
        id_gap: u64,
    },
    /// An operator spreads rooms over the `Up` nodes: at most `max_moves` safe moves,
    /// chosen deterministically here (see [`balance`]): a replica role moves from a busy
    /// node to a less busy one, and ownership moves only by swapping a room's owner and
    /// its replica (which holds every acknowledged message). Epoch + 1 per moved room.
    /// `placement` is [`Catalog::placement_digest`] when the caller saw every owner's
    /// replica in sync: if any room was created or moved since (or this command is a
    /// retried duplicate), it is refused with `not_settled` — a swap must never promote a
    /// replica that is still receiving the log.
    Rebalance {
        max_moves: u64,
        placement: u64,
    },
    /// A user logged out: the session token that expires at `expires_ms` is refused from
    /// now on, on every member. Ended sessions that have expired by `at_ms` are forgotten.
    EndSession {
        user: UserId,
        expires_ms: u64,
        at_ms: u64,
    },
    /// The owner `node` reports that each room's replica holds the room's whole log at
    /// that epoch (it adopted the epoch and received every entry): from then on the
    /// replica may be promoted. Applied per room only while `node` still owns it at that
    /// epoch with a replica; a late or foreign report changes nothing
    /// (docs/REPLICATION.md, "In-sync replicas").
    ReplicasInSync {
        node: ChatNodeId,
        rooms: Vec<(RoomId, u64)>,
    },
    /// [`Command::NodeDown`] as the failure detector decides it: `term` is the Raft term
    /// in which the leader saw the node silent. Refused with `stale_decision` unless the
    /// entry is committed in that same term, so a leader that was paused or cut off and
    /// whose write reaches a newer leader cannot act on what it saw in an older term
    /// (docs/REPLICATION.md, "Control decisions").
    NodeDownInTerm {
        node: ChatNodeId,
        term: u64,
    },
    /// `by` moderates `user` in `room` (see [`moderation`]): checked here against the
    /// room's roles, recorded in the room's audit list.
    Moderate {
        room: RoomId,
        by: UserId,
        user: UserId,
        action: ModAction,
        at_ms: u64,
    },
    /// A group DM of `created_by` and `members` (3 to 20 in all), named `dm-g{id}`.
    CreateGroupDm {
        created_by: UserId,
        members: Vec<UserId>,
        title: Option<String>,
        share_history: bool,
        at_ms: u64,
    },
    /// A member `by` adds `user` to a group DM; `last_seq` is the room's newest seq when
    /// the control asked its node (what `user` may not read without shared history).
    AddGroupMember {
        room: RoomId,
        by: UserId,
        user: UserId,
        last_seq: u64,
        at_ms: u64,
    },
    /// Several commands that were waiting on the leader at once, carried by one log entry
    /// (`control/write.rs`) and applied in order, each exactly as if it had its own entry:
    /// the result is [`CommandOutput::Batch`], one result per command, in order.
    Batch(Vec<Command>),
}

/// `user` has read `room` up to and including message `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadMark {
    pub user: UserId,
    pub room: RoomId,
    pub seq: u64,
}

/// What a successful command returns to the client that proposed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandOutput {
    Done,
    User(User),
    Room(Room),
    Node(ChatNode),
    /// The result of a [`Command::NodeDown`] (and [`Command::DrainNode`]): how many rooms
    /// changed owner and how many got a new replica. Zero for a node that was not `Up`
    /// (or was drained already).
    NodeDown {
        node: ChatNode,
        owners_moved: u64,
        replicas_moved: u64,
    },
    /// The result of a [`Command::CreateDm`]; `created` is false when it existed already.
    Dm {
        room: Room,
        created: bool,
    },
    /// The result of a [`Command::RecoverFromRestore`]: the counters after the jump (the
    /// next ids handed out are one above these).
    Recovered {
        next_user_id: UserId,
        next_room_id: RoomId,
        next_node_id: ChatNodeId,
    },
    /// The result of a [`Command::Rebalance`]: the rooms moved (none when balanced) and
    /// how far from balanced the `Up` nodes still are (0: every node owns and replicates
    /// within one room of every other).
    Rebalanced {
        moves: Vec<RoomMove>,
        remaining_imbalance: u64,
    },
    /// The result of a [`Command::Batch`]: each command's own result, in order.
    Batch(Vec<CommandResult>),
}

/// One room moved by a [`Command::Rebalance`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomMove {
    pub room: RoomId,
    pub from_owner: ChatNodeId,
    pub from_replica: ChatNodeId,
    pub owner: ChatNodeId,
    pub replica: ChatNodeId,
    /// The room's new epoch.
    pub epoch: u64,
}

/// A command the catalog refused. Each variant has a stable [`code`](Self::code).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum CatalogError {
    #[error("the username {0:?} is taken")]
    UsernameTaken(String),
    #[error("usernames are 3 to 32 characters of a-z, 0-9, '_' and '-'")]
    InvalidUsername,
    #[error("a room named {0:?} exists")]
    RoomExists(String),
    #[error("room names are 1 to 64 characters of a-z, 0-9, '_' and '-'")]
    InvalidRoomName,
    #[error("no user with id {0}")]
    UnknownUser(UserId),
    #[error("no room with id {0}")]
    UnknownRoom(RoomId),
    #[error("no chat node with id {0}")]
    UnknownNode(ChatNodeId),
    /// No longer produced (registration is idempotent per name); kept so that the variant
    /// indexes, which travel in bincode between members, stay stable.
    #[error("a chat node named {0:?} is registered")]
    NodeExists(String),
    #[error("the room's epoch is {current}, the command expected {expected}")]
    StaleEpoch { expected: u64, current: u64 },
    #[error("the signing key is already set")]
    SigningKeyAlreadySet,
    #[error("chat node {0} is waiting for an admin's approval")]
    NodePending(ChatNodeId),
    #[error("node names are 1 to 64 characters of a-z, 0-9, '_' and '-'")]
    InvalidNodeName,
    #[error("room names starting with 'dm-' are kept for direct messages")]
    ReservedRoomName,
    #[error("a direct message needs someone other than yourself")]
    DmWithSelf,
    #[error("a direct-message room keeps its two members")]
    DmMembersFixed,
    #[error("no other Up node can take over room {room} ({why}); add or bring up a node first")]
    NoCapacity { room: RoomId, why: String },
    #[error("node {node} does not hold room {room}'s log: only its owner or replica can own it")]
    OwnerWithoutLog { room: RoomId, node: ChatNodeId },
    #[error("rooms were created or moved since the nodes were seen in sync; nothing moved, retry")]
    NotSettled,
    #[error("a control decision made in term {decided} was committed in term {committed}")]
    StaleDecision { decided: u64, committed: u64 },
    #[error("room {room}'s replica does not hold the whole log yet")]
    ReplicaNotInSync { room: RoomId },
    #[error("only room {room}'s owner, its moderators and the admin may moderate it")]
    NotModerator { room: RoomId },
    #[error("only room {room}'s owner and the admin may name or remove moderators")]
    NotRoomOwner { room: RoomId },
    #[error("you are banned from room {room}")]
    Banned { room: RoomId },
    #[error("the room's owner, the admin, moderators (except by the owner) and yourself cannot be moderated")]
    ProtectedUser,
    #[error("user {user} is not a member of room {room}")]
    NotAMember { room: RoomId, user: UserId },
    #[error("only the admin moderates a direct message")]
    DmNotModerated,
    #[error("a mute lasts from 1 ms to 30 days")]
    InvalidMute,
    #[error("user {0} is listed twice (or is the creator)")]
    DuplicateMember(UserId),
    #[error("a group DM has at least 3 members, you included")]
    GroupDmTooSmall,
    #[error("a group DM has at most 20 members, you included")]
    GroupDmTooLarge,
    #[error("this group DM has 20 members already")]
    GroupDmFull,
    #[error("group DM names are 1 to 64 characters without control characters")]
    InvalidGroupName,
    #[error("room {room} is not a group DM")]
    NotGroupDm { room: RoomId },
    #[error("members are added to group DM {room} with what they may read (AddGroupMember)")]
    GroupDmAdd { room: RoomId },
}

impl CatalogError {
    /// The stable machine-readable code clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UsernameTaken(_) => "username_taken",
            Self::InvalidUsername => "invalid_username",
            Self::RoomExists(_) => "room_exists",
            Self::InvalidRoomName => "invalid_room_name",
            Self::UnknownUser(_) => "unknown_user",
            Self::UnknownRoom(_) => "unknown_room",
            Self::UnknownNode(_) => "unknown_node",
            Self::NodeExists(_) => "node_exists",
            Self::StaleEpoch { .. } => "stale_epoch",
            Self::SigningKeyAlreadySet => "signing_key_set",
            Self::NodePending(_) => "node_pending",
            Self::InvalidNodeName => "invalid_node_name",
            Self::ReservedRoomName => "reserved_room_name",
            Self::DmWithSelf => "dm_with_self",
            Self::DmMembersFixed => "dm_members_fixed",
            Self::NoCapacity { .. } => "no_capacity",
            Self::OwnerWithoutLog { .. } => "owner_without_log",
            Self::NotSettled => "not_settled",
            Self::StaleDecision { .. } => "stale_decision",
            Self::ReplicaNotInSync { .. } => "replica_not_in_sync",
            Self::NotModerator { .. } | Self::NotRoomOwner { .. } => "forbidden",
            Self::Banned { .. } => "banned",
            Self::ProtectedUser => "protected_user",
            Self::NotAMember { .. } => "not_a_member",
            Self::DmNotModerated => "dm_not_moderated",
            Self::InvalidMute => "invalid_mute",
            Self::DuplicateMember(_) => "duplicate_member",
            Self::GroupDmTooSmall => "group_dm_too_small",
            Self::GroupDmTooLarge => "group_dm_too_large",
            Self::GroupDmFull => "group_dm_full",
            Self::InvalidGroupName => "invalid_group_name",
            Self::NotGroupDm { .. } => "not_group_dm",
            Self::GroupDmAdd { .. } => "group_dm_add",
        }
    }
}

/// The outcome of one applied command, stored as the Raft response.
pub type CommandResult = Result<CommandOutput, CatalogError>;

/// A row that `apply` changed, so the state machine can persist just that row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touched {
    Meta,
    User(UserId),
    Room(RoomId),
    Member(RoomId, UserId),
    Node(ChatNodeId),
    ReadMark(UserId, RoomId),
    EndedSession(UserId, u64),
    ReplicaInSync(RoomId),
    /// A room's [`RoomPolicy`].
    Policy(RoomId),
    /// A room's audit entry by number.
    Audit(RoomId, u64),
}

/// The replicated catalog, held in memory on every member and persisted row by row.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    pub meta: CatalogMeta,
    pub users: BTreeMap<UserId, User>,
    pub rooms: BTreeMap<RoomId, Room>,
    /// (room, user) pairs.
    pub members: BTreeSet<(RoomId, UserId)>,
    pub nodes: BTreeMap<ChatNodeId, ChatNode>,
    /// (user, room) → the newest seq the user has read there: unread counts that follow
    /// the user across browsers and devices.
    pub read_marks: BTreeMap<(UserId, RoomId), u64>,
    /// Sessions ended by a logout before they expired, as (user, expires_ms) of their
    /// token (see [`Command::EndSession`]).
    pub ended_sessions: BTreeSet<(UserId, u64)>,
    /// room → the epoch at which its owner reported the replica holds the whole log. The
    /// replica is in sync while this equals the room's epoch: any reassignment bumps the
    /// epoch and so ends it (see [`Catalog::replica_in_sync`]).
    pub replicas_in_sync: BTreeMap<RoomId, u64>,
    /// room → its moderators, bans, mutes and group-DM settings (rooms nobody moderated
    /// and that are no group DM have none).
    pub policies: BTreeMap<RoomId, RoomPolicy>,
    /// (room, number) → audit entry: the newest [`AUDIT_KEEP`] moderation acts per room.
    pub audit: BTreeMap<(RoomId, u64), AuditEntry>,
    /// Index username → id, derived from `users` (see [`Catalog::rebuild_indexes`]).
    #[serde(skip)]
    usernames: BTreeMap<String, UserId>,
    /// Index room name → id, derived from `rooms`.
    #[serde(skip)]
    room_names: BTreeMap<String, RoomId>,
    /// Rooms owned and replicated per node, derived from `rooms` and kept current by every
    /// command that places a room, so creating a room does not count all the others
    /// (docs/BENCHMARKS.md, "The control plane as the catalog grows"). Nodes with neither
    /// have no entry, so two equal catalogs have equal indexes.
    #[serde(skip)]
    placements: BTreeMap<ChatNodeId, (usize, usize)>,
    /// Rooms (DMs not counted) per creator, derived from `rooms` (rooms are never removed
    /// and never change creator): the room quota checked before every `CreateRoom` does
    /// not count all the rooms (docs/BENCHMARKS.md, "The control plane at scale").
    #[serde(skip)]
    created_rooms: BTreeMap<UserId, usize>,
}

impl Catalog {
    /// Validates and applies one command, returning its result and the rows it changed.
    /// For a command whose entry's Raft term is not known (tests, tools): a decision fenced
    /// by its term ([`Command::NodeDownInTerm`]) is refused.
    pub fn apply(&mut self, command: Command) -> (CommandResult, Vec<Touched>) {
        self.apply_in_term(command, None)
    }

    /// [`Self::apply`] for a command committed in Raft term `term`: what the state machine
    /// calls for every log entry.
    pub fn apply_in_term(&mut self, command: Command, term: Option<u64>) -> (CommandResult, Vec<Touched>) {
        let mut touched = Vec::new();
        let result = self.apply_inner(command, term, &mut touched);
        (result, touched)
    }

    fn apply_inner(&mut self, command: Command, term: Option<u64>, touched: &mut Vec<Touched>) -> CommandResult {
        match command {
            Command::SetSigningKey { key } => {
                if self.meta.signing_key.is_some() {
                    return Err(CatalogError::SigningKeyAlreadySet);
                }
                self.meta.signing_key = Some(key);
                touched.push(Touched::Meta);
                Ok(CommandOutput::Done)
            }
            Command::CreateUser { username, password_hash, at_ms } => {
                if !valid_name(&username, 3, 32) {
                    return Err(CatalogError::InvalidUsername);
                }
                if self.usernames.contains_key(&username) {
                    return Err(CatalogError::UsernameTaken(username));
                }
                self.meta.next_user_id += 1;
                let user = User { id: self.meta.next_user_id, username, password_hash, created_at_ms: at_ms };
                self.usernames.insert(user.username.clone(), user.id);
                self.users.insert(user.id, user.clone());
                touched.extend([Touched::Meta, Touched::User(user.id)]);
                Ok(CommandOutput::User(user))
            }
            Command::CreateRoom { name, private, created_by, at_ms } => {
                if !valid_name(&name, 1, 64) {
                    return Err(CatalogError::InvalidRoomName);
                }
                if name.starts_with(DM_PREFIX) {
                    return Err(CatalogError::ReservedRoomName);
                }
                if !self.users.contains_key(&created_by) {
                    return Err(CatalogError::UnknownUser(created_by));
                }
                if self.room_names.contains_key(&name) {
                    return Err(CatalogError::RoomExists(name));
                }
                Ok(CommandOutput::Room(self.insert_room(name, private, created_by, at_ms, touched)))
            }
            Command::AddMember { room, user } => {
                let entry = self.rooms.get(&room).ok_or(CatalogError::UnknownRoom(room))?;
                if !self.users.contains_key(&user) {
                    return Err(CatalogError::UnknownUser(user));
                }
                if entry.is_dm() && !self.is_member(room, user) {
                    return Err(CatalogError::DmMembersFixed);
                }
                if entry.is_group_dm() && !self.is_member(room, user) {
                    // Group DMs record what a new member may read: `AddGroupMember`.
                    return Err(CatalogError::GroupDmAdd { room });
                }
                if self.is_banned(room, user) {
                    return Err(CatalogError::Banned { room });
                }
                if self.members.insert((room, user)) {
                    touched.push(Touched::Member(room, user));
                }
                Ok(CommandOutput::Done)
            }
            Command::RegisterNode { name, ws_url, mesh_addr, approved, at_ms } => {
                self.register_node(name, ws_url, mesh_addr, approved, at_ms, touched)
            }
            Command::SetNodeStatus { node, status } => self.set_node_status(node, status, touched),
            Command::AssignRoom { room, owner, replica, epoch } => {
                for node in std::iter::once(owner).chain(replica) {
                    if !self.nodes.contains_key(&node) {
                        return Err(CatalogError::UnknownNode(node));
                    }
                }
                let entry = self.rooms.get_mut(&room).ok_or(CatalogError::UnknownRoom(room))?;
                if entry.epoch != epoch {
                    return Err(CatalogError::StaleEpoch { expected: epoch, current: entry.epoch });
                }
                // Only the owner and an in-sync replica hold every acknowledged message: a
                // node without the whole log would hand out seqs that are taken.
                if entry.owner.is_some() && entry.owner != Some(owner) && entry.replica != Some(owner) {
                    return Err(CatalogError::OwnerWithoutLog { room, node: owner });
                }
                let promoted = entry.owner.is_some() && entry.owner != Some(owner);
                if promoted && self.replicas_in_sync.get(&room) != Some(&entry.epoch) {
                    return Err(CatalogError::ReplicaNotInSync { room });
                }
                let before = (entry.owner, entry.replica);
                entry.owner = Some(owner);
                entry.replica = replica;
                entry.epoch += 1;
                let placed = entry.clone();
                touched.push(Touched::Room(room));
                self.replace_placement(before, (placed.owner, placed.replica));
                Ok(CommandOutput::Room(placed))
            }
            Command::NodeDown { node } => self.node_down(node, NodeStatus::Down, touched),
            Command::ApproveNode { node } => self.approve_node(node, touched),
            Command::NodeUp { node } => self.node_up(node, touched),
            Command::CreateDm { a, b, at_ms } => self.create_dm(a, b, at_ms, touched),
            Command::MarkRead { marks } => {
                for ReadMark { user, room, seq } in marks {
                    let current = self.read_marks.get(&(user, room)).copied().unwrap_or(0);
                    if seq > current && self.is_member(room, user) && !self.is_banned(room, user) {
                        self.read_marks.insert((user, room), seq);
                        touched.push(Touched::ReadMark(user, room));
                    }
                }
                Ok(CommandOutput::Done)
            }
            Command::DrainNode { node } => self.drain_node(node, touched),
            Command::UndrainNode { node } => self.undrain_node(node, touched),
            Command::RecoverFromRestore { signing_key, id_gap } => {
                let meta = &mut self.meta;
                meta.signing_key = Some(signing_key);
                meta.next_user_id = meta.next_user_id.saturating_add(id_gap);
                meta.next_room_id = meta.next_room_id.saturating_add(id_gap);
                meta.next_node_id = meta.next_node_id.saturating_add(id_gap);
                touched.push(Touched::Meta);
                Ok(CommandOutput::Recovered {
                    next_user_id: meta.next_user_id,
                    next_room_id: meta.next_room_id,
                    next_node_id: meta.next_node_id,
                })
            }
            Command::Rebalance { max_moves, placement } => {
                if placement != self.placement_digest() {
                    return Err(CatalogError::NotSettled);
                }
                Ok(self.rebalance(max_moves, touched))
            }
            Command::EndSession { user, expires_ms, at_ms } => Ok(self.end_session(user, expires_ms, at_ms, touched)),
            Command::ReplicasInSync { node, rooms } => Ok(self.replicas_in_sync(node, rooms, touched)),
            Command::NodeDownInTerm { node, term: decided } => match term {
                Some(committed) if committed == decided => self.node_down(node, NodeStatus::Down, touched),
                committed => Err(CatalogError::StaleDecision { decided, committed: committed.unwrap_or(0) }),
            },
            Command::Moderate { room, by, user, action, at_ms } => {
                self.moderate(room, by, user, action, at_ms, touched)
            }
            Command::CreateGroupDm { created_by, members, title, share_history, at_ms } => {
                self.create_group_dm(created_by, members, title, share_history, at_ms, touched)
            }
            Command::AddGroupMember { room, by, user, last_seq, at_ms: _ } => {
                self.add_group_member(room, by, user, last_seq, touched)
            }
            Command::Batch(commands) => Ok(CommandOutput::Batch(
                commands.into_iter().map(|command| self.apply_inner(command, term, touched)).collect(),
            )),
        }
    }

    /// The DM room of `a` and `b`: the existing one, or a new private room with both as
    /// members, placed like any new room.
    fn create_dm(&mut self, a: UserId, b: UserId, at_ms: u64, touched: &mut Vec<Touched>) -> CommandResult {
        if a == b {
            return Err(CatalogError::DmWithSelf);
        }
        for user in [a, b] {
            if !self.users.contains_key(&user) {
                return Err(CatalogError::UnknownUser(user));
            }
        }
        let name = dm_name(a, b);
        if let Some(room) = self.room_names.get(&name).and_then(|id| self.rooms.get(id)) {
            // Only `CreateDm` makes `dm-` rooms, so this one is theirs; check it anyway.
            let theirs = room.private && self.room_members(room.id).eq([a.min(b), a.max(b)]);
            return if theirs {
                Ok(CommandOutput::Dm { room: room.clone(), created: false })
            } else {
                Err(CatalogError::RoomExists(name))
            };
        }
        let room = self.insert_room(name, true, a, at_ms, touched);
        self.members.insert((room.id, b));
        touched.push(Touched::Member(room.id, b));
        Ok(CommandOutput::Dm { room, created: true })
    }

    /// Adds a (validated) room with its creator as first member, placed on the least-loaded
    /// healthy nodes.
    fn insert_room(
        &mut self,
        name: String,
        private: bool,
        created_by: UserId,
        at_ms: u64,
        touched: &mut Vec<Touched>,
    ) -> Room {
        self.meta.next_room_id += 1;
        let loads = nodes::Loads::of(self);
        let owner = loads.least(&[]);
        let replica = owner.and_then(|owner| loads.least(&[owner]));
        let room = Room {
            id: self.meta.next_room_id,
            name,
            private,
            created_by,
            created_at_ms: at_ms,
            owner,
            replica,
            epoch: u64::from(owner.is_some()),
        };
        if room.replica.is_some() {
            // A new room's log is empty everywhere: its replica holds all of it.
            self.replicas_in_sync.insert(room.id, room.epoch);
            touched.push(Touched::ReplicaInSync(room.id));
        }
        self.room_names.insert(room.name.clone(), room.id);
        if !room.is_dm() {
            *self.created_rooms.entry(created_by).or_default() += 1;
        }
        self.replace_placement((None, None), (room.owner, room.replica));
        self.rooms.insert(room.id, room.clone());
        self.members.insert((room.id, created_by));
        touched.extend([Touched::Meta, Touched::Room(room.id), Touched::Member(room.id, created_by)]);
        room
    }

    /// Recomputes the derived indexes after loading rows from disk or a snapshot.
    pub fn rebuild_indexes(&mut self) {
        self.usernames = self.users.values().map(|user| (user.username.clone(), user.id)).collect();
        self.room_names = self.rooms.values().map(|room| (room.name.clone(), room.id)).collect();
        self.created_rooms = BTreeMap::new();
        for room in self.rooms.values().filter(|room| !room.is_dm()) {
            *self.created_rooms.entry(room.created_by).or_default() += 1;
        }
        self.rebuild_placements();
    }

    /// Recounts [`Self::placements`] from the rooms (after a command that moved many).
    pub(crate) fn rebuild_placements(&mut self) {
        self.placements = placements_of(self.rooms.values());
    }

    /// Moves one room's counts in [`Self::placements`] from `from` (owner, replica) to `to`.
    fn replace_placement(
        &mut self,
        from: (Option<ChatNodeId>, Option<ChatNodeId>),
        to: (Option<ChatNodeId>, Option<ChatNodeId>),
    ) {
        for (node, owned) in [(from.0, true), (from.1, false)] {
            let Some(node) = node else { continue };
            if let Some(count) = self.placements.get_mut(&node) {
                let slot = if owned { &mut count.0 } else { &mut count.1 };
                *slot = slot.saturating_sub(1);
                if *count == (0, 0) {
                    self.placements.remove(&node);
                }
            }
        }
        for (node, owned) in [(to.0, true), (to.1, false)] {
            let Some(node) = node else { continue };
            let count = self.placements.entry(node).or_default();
            *(if owned { &mut count.0 } else { &mut count.1 }) += 1;
        }
    }

    /// Rooms owned and replicated per node (nodes with neither are absent).
    pub(crate) fn placements(&self) -> &BTreeMap<ChatNodeId, (usize, usize)> {
        &self.placements
    }

    pub fn user_by_name(&self, username: &str) -> Option<&User> {
        self.usernames.get(username).and_then(|id| self.users.get(id))
    }

    /// Changes whenever a room is created or reassigned (epochs only grow): the sum of
    /// all room epochs. Cheap enough for operator commands (one pass over the rooms).
    pub fn placement_digest(&self) -> u64 {
        self.rooms.values().fold(0u64, |sum, room| sum.wrapping_add(room.epoch))
    }

    pub fn is_member(&self, room: RoomId, user: UserId) -> bool {
        self.members.contains(&(room, user))
    }

    /// The members of a room, in id order.
    pub fn room_members(&self, room: RoomId) -> impl Iterator<Item = UserId> + '_ {
        self.members.range((room, UserId::MIN)..=(room, UserId::MAX)).map(|(_, user)| *user)
    }

    /// Rooms owned and replicated per registered node.
    pub fn node_room_counts(&self) -> BTreeMap<ChatNodeId, (u64, u64)> {
        self.nodes
            .keys()
            .map(|id| {
                let (owned, replicated) = self.placements.get(id).copied().unwrap_or_default();
                (*id, (owned as u64, replicated as u64))
            })
            .collect()
    }

    pub fn room_by_name(&self, name: &str) -> Option<&Room> {
        self.room_names.get(name).and_then(|id| self.rooms.get(id))
    }

    /// The node registered under `name`.
    pub fn node_by_name(&self, name: &str) -> Option<&ChatNode> {
        self.nodes.values().find(|node| node.name == name)
    }

    /// Rooms `user` created, direct messages not counted (the room quota).
    pub fn rooms_created_by(&self, user: UserId) -> usize {
        let counted = self.created_rooms.get(&user).copied().unwrap_or_default();
        debug_assert_eq!(
            counted,
            self.rooms.values().filter(|room| room.created_by == user && !room.is_dm()).count(),
            "the per-creator index matches a full count"
        );
        counted
    }

    /// Rooms a user may see: every public room and the private rooms they belong to.
    pub fn visible_rooms(&self, user: UserId) -> impl Iterator<Item = &Room> {
        self.rooms.values().filter(move |room| !room.private || self.is_member(room.id, user))
    }
}

/// Names are lowercase ASCII letters, digits, '_' and '-', within the given length.
/// Rooms owned and replicated per node, counted from `rooms`.
fn placements_of<'a>(rooms: impl Iterator<Item = &'a Room>) -> BTreeMap<ChatNodeId, (usize, usize)> {
    let mut counts: BTreeMap<ChatNodeId, (usize, usize)> = BTreeMap::new();
    for room in rooms {
        if let Some(owner) = room.owner {
            counts.entry(owner).or_default().0 += 1;
        }
        if let Some(replica) = room.replica {
            counts.entry(replica).or_default().1 += 1;
        }
    }
    counts
}

fn valid_name(name: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(catalog: &mut Catalog, name: &str) -> CommandResult {
        let command = Command::CreateUser { username: name.into(), password_hash: "h".into(), at_ms: 1 };
        catalog.apply(command).0
    }

    #[test]
    fn duplicate_username_is_a_typed_error_and_changes_nothing() {
        let mut catalog = Catalog::default();
        assert!(user(&mut catalog, "alice").is_ok());
        let before = catalog.clone();
        let err = user(&mut catalog, "alice").unwrap_err();
        assert_eq!(err.code(), "username_taken");
        assert_eq!(catalog, before);
        assert_eq!(user(&mut catalog, "A!").unwrap_err().code(), "invalid_username");
    }

    #[test]
    fn a_batch_applies_in_order_with_each_result_as_its_own_entry_would_have() {
        let commands = vec![
            Command::CreateUser { username: "alice".into(), password_hash: "h".into(), at_ms: 1 },
            Command::CreateUser { username: "alice".into(), password_hash: "h".into(), at_ms: 2 },
            Command::CreateRoom { name: "general".into(), private: false, created_by: 1, at_ms: 3 },
            Command::AddMember { room: 9, user: 1 },
            Command::CreateUser { username: "bob".into(), password_hash: "h".into(), at_ms: 4 },
            Command::AddMember { room: 1, user: 2 },
        ];
        let mut one_by_one = Catalog::default();
        let mut expected = Vec::new();
        let mut rows = Vec::new();
        for command in commands.clone() {
            let (result, touched) = one_by_one.apply(command);
            expected.push(result);
            rows.extend(touched);
        }
        let mut batched = Catalog::default();
        let (result, touched) = batched.apply(Command::Batch(commands));
        assert_eq!(result, Ok(CommandOutput::Batch(expected.clone())));
        assert_eq!(expected[1].as_ref().unwrap_err().code(), "username_taken", "the second alice is refused");
        assert_eq!(expected[3].as_ref().unwrap_err().code(), "unknown_room");
        assert_eq!(batched, one_by_one, "the same catalog");
        assert_eq!(touched, rows, "the same rows to persist");
    }

    #[test]
    fn rooms_per_creator_are_counted_without_dms_and_rebuilt_the_same() {
        let mut catalog = Catalog::default();
        user(&mut catalog, "alice").unwrap();
        user(&mut catalog, "bob").unwrap();
        for name in ["one", "two"] {
            let create = Command::CreateRoom { name: name.into(), private: false, created_by: 1, at_ms: 1 };
            catalog.apply(create).0.unwrap();
        }
        catalog.apply(Command::CreateDm { a: 1, b: 2, at_ms: 1 }).0.unwrap();
        assert_eq!((catalog.rooms_created_by(1), catalog.rooms_created_by(2)), (2, 0), "a DM is not counted");
        let mut loaded = catalog.clone();
        loaded.created_rooms.clear();
        loaded.rebuild_indexes();
        assert_eq!(loaded, catalog, "the index rebuilt from the rooms is the one kept");
    }

    #[test]
    fn rooms_are_unique_and_members_checked() {
        let mut catalog = Catalog::default();
        user(&mut catalog, "alice").unwrap();
        let create = Command::CreateRoom { name: "general".into(), private: false, created_by: 1, at_ms: 1 };
        assert!(catalog.apply(create.clone()).0.is_ok());
        assert_eq!(catalog.apply(create).0.unwrap_err().code(), "room_exists");
        assert!(catalog.is_member(1, 1));
        let bad = Command::AddMember { room: 9, user: 1 };
        assert_eq!(catalog.apply(bad).0.unwrap_err().code(), "unknown_room");
    }

    #[test]
    fn read_marks_move_forward_for_members_only() {
        let mut catalog = Catalog::default();
        user(&mut catalog, "alice").unwrap();
        user(&mut catalog, "bob").unwrap();
        let create = Command::CreateRoom { name: "general".into(), private: true, created_by: 1, at_ms: 1 };
        catalog.apply(create).0.unwrap();
        let mark = |user, room, seq| ReadMark { user, room, seq };
        let (result, touched) =
            catalog.apply(Command::MarkRead { marks: vec![mark(1, 1, 5), mark(2, 1, 5), mark(1, 9, 1)] });
        assert_eq!(result, Ok(CommandOutput::Done), "a batch with stale marks still applies");
        assert_eq!(touched, vec![Touched::ReadMark(1, 1)], "non-members and unknown rooms are skipped");
        let (_, touched) = catalog.apply(Command::MarkRead { marks: vec![mark(1, 1, 3)] });
        assert!(touched.is_empty(), "marks never move back");
        assert_eq!(catalog.read_marks.get(&(1, 1)), Some(&5));
        assert_eq!(catalog.read_marks.len(), 1);
    }

    #[test]
    fn assignment_is_fenced_by_epoch() {
        let mut catalog = Catalog::default();
        user(&mut catalog, "alice").unwrap();
        for name in ["n1", "n2", "n3"] {
            let command = Command::RegisterNode {
                name: name.into(),
                ws_url: String::new(),
                mesh_addr: String::new(),
                approved: true,
                at_ms: 0,
            };
            catalog.apply(command).0.unwrap();
        }
        let create = Command::CreateRoom { name: "r".into(), private: false, created_by: 1, at_ms: 1 };
        let Ok(CommandOutput::Room(room)) = catalog.apply(create).0 else { panic!("room not created") };
        assert_eq!((room.owner, room.replica, room.epoch), (Some(1), Some(2), 1));
        let stale = Command::AssignRoom { room: room.id, owner: 2, replica: Some(1), epoch: 0 };
        assert_eq!(catalog.apply(stale).0.unwrap_err().code(), "stale_epoch");
        let fresh = Command::AssignRoom { room: room.id, owner: 2, replica: Some(1), epoch: 1 };
        assert!(catalog.apply(fresh).0.is_ok());
        assert_eq!(catalog.rooms[&room.id].epoch, 2);
        let placed = catalog.rooms[&room.id].clone();
        let stranger = [1, 2, 3].into_iter().find(|n| Some(*n) != placed.owner && Some(*n) != placed.replica);
        let stranger = stranger.expect("a node that holds nothing of the room");
        let blind = Command::AssignRoom { room: room.id, owner: stranger, replica: placed.owner, epoch: 2 };
        assert_eq!(catalog.apply(blind).0.unwrap_err().code(), "owner_without_log");
        assert_eq!(catalog.rooms[&room.id], placed, "a refused assignment changes nothing");
    }

    #[test]
    fn recovering_from_a_restore_replaces_the_key_and_skips_ids() {
        let mut catalog = Catalog::default();
        catalog.apply(Command::SetSigningKey { key: vec![1; 32] }).0.unwrap();
        user(&mut catalog, "alice").unwrap();
        let (result, touched) = catalog.apply(Command::RecoverFromRestore { signing_key: vec![2; 32], id_gap: 1_000 });
        assert_eq!(
            result,
            Ok(CommandOutput::Recovered { next_user_id: 1_001, next_room_id: 1_000, next_node_id: 1_000 })
        );
        assert_eq!(touched, vec![Touched::Meta]);
        assert_eq!(catalog.meta.signing_key, Some(vec![2; 32]));
        match user(&mut catalog, "bob") {
            Ok(CommandOutput::User(bob)) => assert_eq!(bob.id, 1_002),
            other => panic!("{other:?}"),
        }
        // The old users keep their ids; only new ones skip.
        assert_eq!(catalog.user_by_name("alice").map(|u| u.id), Some(1));
    }

    fn dm(catalog: &mut Catalog, a: UserId, b: UserId) -> CommandResult {
        catalog.apply(Command::CreateDm { a, b, at_ms: 5 }).0
    }

    #[test]
    fn a_dm_is_one_private_room_of_two_created_once() {
        let mut catalog = Catalog::default();
        for name in ["alice", "bob", "carol"] {
            user(&mut catalog, name).unwrap();
        }
        let Ok(CommandOutput::Dm { room, created: true }) = dm(&mut catalog, 2, 1) else { panic!("dm not created") };
        assert_eq!((room.name.as_str(), room.private, room.is_dm()), ("dm-1-2", true, true));
        assert_eq!(catalog.room_members(room.id).collect::<Vec<_>>(), vec![1, 2]);
        let Ok(CommandOutput::Dm { room: again, created: false }) = dm(&mut catalog, 1, 2) else { panic!("no dm") };
        assert_eq!(again, room);
        assert_eq!(catalog.rooms.len(), 1);

        assert_eq!(dm(&mut catalog, 1, 1).unwrap_err().code(), "dm_with_self");
        assert_eq!(dm(&mut catalog, 1, 9).unwrap_err().code(), "unknown_user");
        let add = Command::AddMember { room: room.id, user: 3 };
        assert_eq!(catalog.apply(add).0.unwrap_err().code(), "dm_members_fixed");
        let squat = Command::CreateRoom { name: "dm-1-3".into(), private: false, created_by: 3, at_ms: 1 };
        assert_eq!(catalog.apply(squat).0.unwrap_err().code(), "reserved_room_name");
        assert_eq!(catalog.visible_rooms(3).count(), 0, "a third user does not see the dm");
    }
}
