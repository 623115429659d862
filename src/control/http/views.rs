//! What the API shows and takes, where more than one handler module (or a client in
//! `cli/`, or the chat node's edge) needs it: rooms, chat nodes, the cluster, the login
//! credentials, a backup request. Each view is built from this member's applied catalog
//! (the cluster view from Raft's metrics, the leader's when it can be had).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::control::catalog::{Catalog, ChatNode, ChatNodeId, ModAction, NodeStatus, Room, RoomId, UserId};
use crate::control::loads::NodeSeen;
use crate::control::raft::types::MemberId;
use crate::control::AppState;
use crate::protocol::NodeLoad;

/// A member is healthy from the leader's view when its log is at most this far behind.
const HEALTHY_LAG: u64 = 1_000;

/// What `POST /api/users` and `POST /api/sessions` take.
#[derive(Deserialize)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

/// An account as the API shows it.
#[derive(Serialize)]
pub struct UserView {
    pub id: UserId,
    pub username: String,
}

/// A room as the API shows it.
#[derive(Serialize)]
pub struct RoomView {
    id: u64,
    name: String,
    private: bool,
    /// A direct-message room (private, exactly two members, named `dm-{id}-{id}`).
    dm: bool,
    owner: Option<u64>,
    replica: Option<u64>,
    epoch: u64,
    /// Whether the replica holds the room's whole log (it may take over if the owner
    /// fails; false while a new replica is still receiving it: docs/REPLICATION.md).
    replica_in_sync: bool,
    /// Whether the caller is a member.
    member: bool,
    /// A group DM (private, 3 to 20 members, named `dm-g{id}`).
    group_dm: bool,
    /// For a group DM: its members' usernames, in id order (the room's label).
    #[serde(skip_serializing_if = "Option::is_none")]
    members: Option<Vec<String>>,
    /// For a group DM: the optional name its creator gave it.
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<String>,
    /// For a group DM: whether members added later read the earlier messages.
    #[serde(skip_serializing_if = "Option::is_none")]
    share_history: Option<bool>,
}

impl RoomView {
    pub fn new(catalog: &Catalog, room: &Room, member: bool) -> Self {
        let group = catalog.group_dm(room.id).filter(|_| room.is_group_dm());
        Self {
            group_dm: group.is_some(),
            members: group.map(|_| catalog.room_members(room.id).map(|user| username(catalog, user)).collect()),
            title: group.and_then(|group| group.title.clone()),
            share_history: group.map(|group| group.share_history),
            replica_in_sync: catalog.replica_in_sync(room),
            id: room.id,
            name: room.name.clone(),
            private: room.private,
            dm: room.is_dm(),
            owner: room.owner,
            replica: room.replica,
            epoch: room.epoch,
            member,
        }
    }
}

/// A user's name for a view (`user 7` for one this member does not know).
pub fn username(catalog: &Catalog, user: UserId) -> String {
    catalog.users.get(&user).map_or_else(|| format!("user {user}"), |user| user.username.clone())
}

/// What `GET /api/rooms/{id}/moderation` shows: the room's roles, bans and mutes in force.
#[derive(Serialize)]
pub struct ModerationView {
    pub room: RoomId,
    /// The room's owner (its creator; none for a 1:1 DM).
    pub owner: Option<String>,
    /// The moderators the owner named.
    pub moderators: Vec<String>,
    pub banned: Vec<String>,
    pub muted: Vec<MuteView>,
    /// Whether the caller may name and remove moderators (the owner or the admin).
    pub can_name_moderators: bool,
}

#[derive(Serialize)]
pub struct MuteView {
    pub username: String,
    pub until_ms: u64,
}

impl ModerationView {
    pub fn new(catalog: &Catalog, room: &Room, caller: UserId, now_ms: u64) -> Self {
        let policy = catalog.policies.get(&room.id);
        let owner = (!room.is_dm()).then(|| username(catalog, room.created_by));
        let names = |users: Option<Vec<UserId>>| -> Vec<String> {
            users.unwrap_or_default().into_iter().map(|user| username(catalog, user)).collect()
        };
        Self {
            room: room.id,
            owner,
            moderators: names(policy.map(|p| p.moderators.iter().copied().collect())),
            banned: names(policy.map(|p| p.banned.iter().copied().collect())),
            muted: policy
                .map(|p| {
                    let live = p.muted.iter().filter(|(_, until)| **until > now_ms);
                    live.map(|(user, until)| MuteView { username: username(catalog, *user), until_ms: *until })
                        .collect()
                })
                .unwrap_or_default(),
            can_name_moderators: catalog.is_admin(caller) || (room.created_by == caller && !room.is_dm()),
        }
    }
}

/// What `GET /api/rooms/{id}/audit` shows: the room's moderation acts, oldest first.
#[derive(Serialize)]
pub struct AuditView {
    pub room: RoomId,
    pub entries: Vec<AuditEntryView>,
}

/// One act: who (`by`), what (`action`), whom (`username`), when (`at_ms`), until when
/// (`until_ms`, mutes only).
#[derive(Serialize)]
pub struct AuditEntryView {
    pub at_ms: u64,
    pub by: String,
    pub action: &'static str,
    pub username: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<u64>,
}

impl AuditView {
    pub fn new(catalog: &Catalog, room: RoomId) -> Self {
        let entries = catalog
            .room_audit(room)
            .map(|entry| AuditEntryView {
                at_ms: entry.at_ms,
                by: username(catalog, entry.by),
                action: entry.action.name(),
                username: username(catalog, entry.user),
                until_ms: match entry.action {
                    ModAction::Mute { until_ms } => Some(until_ms),
                    _ => None,
                },
            })
            .collect();
        Self { room, entries }
    }
}

/// What `GET /api/nodes` (and `districhat status`) shows of the node registry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodesView {
    pub nodes: Vec<NodeView>,
}

/// One chat node: the catalog's facts and the leader's last heartbeat figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeView {
    pub id: ChatNodeId,
    pub name: String,
    /// `host:port` of the node (mesh links, internal history).
    pub addr: String,
    pub ws_url: String,
    /// `up`, `down`, `pending` (awaiting approval), `drained` (out of service, alive) or
    /// `drained_down` (out of service and silent).
    pub status: String,
    /// Rooms the catalog assigns to it as owner and as replica.
    pub rooms_owned: u64,
    pub rooms_replicated: u64,
    /// Its last heartbeat's figures; `null` when the leader has none (or could not be asked).
    pub load: Option<NodeLoad>,
    /// Milliseconds since the leader last heard from it.
    pub last_seen_ms: Option<u64>,
}

impl NodeView {
    pub fn new(catalog: &Catalog, node: &ChatNode, seen: Option<&NodeSeen>) -> Self {
        let (rooms_owned, rooms_replicated) = catalog.node_room_counts().get(&node.id).copied().unwrap_or_default();
        Self::with_counts(node, (rooms_owned, rooms_replicated), seen)
    }

    pub fn with_counts(node: &ChatNode, (rooms_owned, rooms_replicated): (u64, u64), seen: Option<&NodeSeen>) -> Self {
        let status = match node.status {
            NodeStatus::Up => "up",
            NodeStatus::Down => "down",
            NodeStatus::Pending => "pending",
            NodeStatus::Drained => "drained",
            NodeStatus::DrainedDown => "drained_down",
        };
        Self {
            id: node.id,
            name: node.name.clone(),
            addr: node.mesh_addr.clone(),
            ws_url: node.ws_url.clone(),
            status: status.into(),
            rooms_owned,
            rooms_replicated,
            load: seen.and_then(|seen| seen.load.clone()),
            last_seen_ms: seen.map(|seen| seen.last_seen_ms),
        }
    }
}

/// The cluster as one member sees it (the contract's `/api/cluster`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterView {
    /// The member that answered.
    pub id: MemberId,
    pub leader: Option<MemberId>,
    pub term: u64,
    /// Applied log index of the answering member.
    pub applied: u64,
    pub last_log: u64,
    pub members: Vec<MemberView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberView {
    pub id: MemberId,
    pub addr: String,
    /// `leader`, `follower` or `learner`.
    pub role: String,
    /// Known only to the leader (replication progress); `null` elsewhere.
    pub healthy: Option<bool>,
    /// The highest log index the leader knows this member holds.
    pub matched: Option<u64>,
}

impl ClusterView {
    /// The leader's view when it can be had (it knows every member's progress), else this
    /// member's own; only this member's own when `local`.
    pub async fn gather(app: &AppState, local: bool) -> Self {
        let view = local_view(app);
        if local || view.leader.is_none() || view.leader == Some(app.id) {
            return view;
        }
        let leader_addr = view.members.iter().find(|member| Some(member.id) == view.leader).map(|m| m.addr.clone());
        if let Some(addr) = leader_addr {
            let asked = app
                .client
                .get(format!("http://{addr}/api/cluster?local=true"))
                .timeout(Duration::from_millis(500))
                .send()
                .await;
            if let Ok(response) = asked {
                if let Ok(leader_view) = response.json::<ClusterView>().await {
                    return leader_view;
                }
            }
        }
        view
    }
}

fn local_view(app: &AppState) -> ClusterView {
    let metrics = app.raft.metrics().borrow().clone();
    let membership = metrics.membership_config.membership();
    let voters: Vec<MemberId> = membership.voter_ids().collect();
    let last_log = metrics.last_log_index.unwrap_or(0);
    let is_leader = metrics.current_leader == Some(app.id);
    let members = membership
        .nodes()
        .map(|(id, node)| {
            let role = if metrics.current_leader == Some(*id) {
                "leader"
            } else if voters.contains(id) {
                "follower"
            } else {
                "learner"
            };
            let matched = match (&metrics.replication, *id == app.id) {
                (_, true) => Some(last_log),
                (Some(replication), false) => replication.get(id).copied().flatten().map(|log_id| log_id.index),
                (None, false) => None,
            };
            let healthy = is_leader.then(|| matched.is_some_and(|m| last_log.saturating_sub(m) <= HEALTHY_LAG));
            MemberView {
                id: *id,
                addr: node.addr.clone(),
                role: role.into(),
                healthy,
                matched: matched.filter(|_| is_leader),
            }
        })
        .collect();
    ClusterView {
        id: app.id,
        leader: metrics.current_leader,
        term: metrics.current_term,
        applied: metrics.last_applied.map_or(0, |log_id| log_id.index),
        last_log,
        members,
    }
}

/// The request: the name of the new backup inside the process's `backup_dir`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupRequest {
    /// 1-64 characters of `A-Za-z0-9._-`, not starting with a dot; must not exist yet.
    pub name: String,
}
