//! Who leads, and what the leader heard from the chat nodes: the last heartbeat figures
//! per node ([`NodeSeen`]), this member's own when it leads, else asked of the leader
//! (`GET /internal/nodes/loads`, a short timeout). The token list, the node list, drain
//! and rebalance progress and the nodes page all read them; the heartbeats themselves
//! are recorded by [`Liveness`](super::liveness::Liveness).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::catalog::{Catalog, ChatNode, ChatNodeId, NodeStatus};
use super::raft::types::MemberId;
use super::secret::SECRET_HEADER;
use super::AppState;
use crate::protocol::NodeLoad;

/// How long a follower waits for the leader's load figures before it does without.
const LOADS_TIMEOUT: Duration = Duration::from_millis(300);

/// What `GET /internal/nodes/loads` answers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LoadsReply {
    /// False when the answering member does not lead: its (empty) figures mean nothing.
    pub leader: bool,
    pub nodes: Vec<NodeSeen>,
}

/// One node's last heartbeat as the leader saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeSeen {
    pub id: ChatNodeId,
    /// `None` until the node's first heartbeat to this leader.
    pub load: Option<NodeLoad>,
    /// Milliseconds since that heartbeat (or since the leader started counting the node).
    pub last_seen_ms: u64,
    /// The routing-table version the node held at that heartbeat (0 when unknown).
    #[serde(default)]
    pub routes_version: u64,
}

impl NodeSeen {
    /// What the node last reported, if that was within `timeout_ms` (else it may be gone
    /// and its report says nothing about now).
    pub fn recent_load(&self, timeout_ms: u64) -> Option<&NodeLoad> {
        self.load.as_ref().filter(|_| self.last_seen_ms < timeout_ms)
    }
}

/// The latest heartbeat figures per node: this member's own memory when it leads, else the
/// leader's (asked with a short timeout). Empty when neither can be had.
pub async fn node_loads(app: &AppState) -> BTreeMap<ChatNodeId, NodeSeen> {
    let leader = leader(app);
    if leader.id == Some(app.id) {
        return local_loads(app, leader.term);
    }
    let Some(addr) = leader.addr else { return BTreeMap::new() };
    let asked = app
        .client
        .get(format!("http://{addr}/internal/nodes/loads"))
        .header(SECRET_HEADER, app.secret.expose())
        .timeout(LOADS_TIMEOUT)
        .send()
        .await;
    let reply = match asked {
        Ok(response) if response.status().is_success() => response.json::<LoadsReply>().await.ok(),
        _ => None,
    };
    match reply {
        Some(reply) if reply.leader => reply.nodes.into_iter().map(|seen| (seen.id, seen)).collect(),
        _ => {
            tracing::debug!(leader = %addr, "no load figures from the leader; using catalog order");
            BTreeMap::new()
        }
    }
}

pub fn local_loads(app: &AppState, term: u64) -> BTreeMap<ChatNodeId, NodeSeen> {
    let now = Instant::now();
    app.liveness
        .snapshot(term)
        .into_iter()
        .map(|(id, seen)| {
            let last_seen_ms = u64::try_from(now.duration_since(seen.at).as_millis()).unwrap_or(u64::MAX);
            (id, NodeSeen { id, load: seen.load, last_seen_ms, routes_version: seen.routes_version })
        })
        .collect()
}

/// Who leads, as this member knows it.
pub struct LeaderInfo {
    pub id: Option<MemberId>,
    pub term: u64,
    /// The leader's `host:port`.
    pub addr: Option<String>,
    /// Whether this member leads and a majority of the group acknowledged it within an
    /// election timeout (`election_max_ms`). openraft 0.9 has no check-quorum: a leader
    /// cut off from the other members keeps believing it leads while a majority elects
    /// another. Such a leader must not act for the group (answer nodes' heartbeats, mark
    /// nodes down): docs/REPLICATION.md, "Control decisions".
    pub holds_quorum: bool,
}

pub fn leader(app: &AppState) -> LeaderInfo {
    let metrics = app.raft.metrics();
    let metrics = metrics.borrow();
    let id = metrics.current_leader;
    let addr = id.and_then(|leader| {
        metrics.membership_config.nodes().find(|(member, _)| **member == leader).map(|(_, node)| node.addr.clone())
    });
    let heard_lately = metrics.millis_since_quorum_ack.is_some_and(|ms| ms <= app.config.raft.election_max_ms);
    LeaderInfo { id, term: metrics.current_term, addr, holds_quorum: id == Some(app.id) && heard_lately }
}

/// The `Up` nodes (and the others `also` names) whose last heartbeat carried a routing
/// table older than `since`, or that have not heartbeated to this leader: they have not
/// acted on the room moves in `since` yet. Shared by drain and rebalance progress.
pub fn nodes_behind(
    catalog: &Catalog,
    loads: &BTreeMap<ChatNodeId, NodeSeen>,
    since: u64,
    also: impl Fn(&ChatNode) -> bool,
) -> Vec<ChatNodeId> {
    catalog
        .nodes
        .values()
        .filter(|node| node.status == NodeStatus::Up || also(node))
        .filter(|node| loads.get(&node.id).is_none_or(|seen| seen.routes_version < since))
        .map(|node| node.id)
        .collect()
}
