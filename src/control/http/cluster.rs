//! Health, metrics and the cluster view: `/healthz`, `/metrics`, `/api/cluster`.

use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use crate::control::raft::types::MemberId;
use crate::control::AppState;

/// A member is healthy from the leader's view when its log is at most this far behind.
const HEALTHY_LAG: u64 = 1_000;

/// `GET /healthz`: 200 when this member belongs to a group that has a leader.
pub async fn healthz(State(app): State<AppState>) -> Response {
    let metrics = app.raft.metrics().borrow().clone();
    let in_group = metrics.membership_config.nodes().any(|(id, _)| *id == app.id);
    match metrics.current_leader {
        Some(leader) if in_group && metrics.running_state.is_ok() => {
            Json(serde_json::json!({"status": "ok", "member": app.id, "leader": leader})).into_response()
        }
        _ => ApiError::unavailable("this member has no leader yet").into_response(),
    }
}

/// `GET /metrics`: Prometheus text.
pub async fn metrics() -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], crate::telemetry::render_metrics()).into_response()
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

#[derive(Deserialize)]
pub struct ClusterQuery {
    /// Answer from this member's own view instead of asking the leader.
    #[serde(default)]
    local: bool,
}

/// `GET /api/cluster`: the leader's view when it can be had (it knows every member's
/// progress), else this member's own.
pub async fn cluster(State(app): State<AppState>, Query(query): Query<ClusterQuery>) -> Json<ClusterView> {
    let view = local_view(&app);
    if query.local || view.leader.is_none() || view.leader == Some(app.id) {
        return Json(view);
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
                return Json(leader_view);
            }
        }
    }
    Json(view)
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
